/* synth.c - the deterministic test-model synthesizer: a BPE vocabulary
 * learned from a built-in English corpus, seeded pseudo-random llama weights,
 * written through the GGUF writer one tensor at a time. */
#include "synth.h"

#include "fb_error.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "kernels.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the corpus (plain English, written for this file) ---- */

static const char corpus[] =
    "The federation is a group of independent nodes that agree on one shared history. Each "
    "node keeps its own copy of the log, and no single node is trusted to decide alone. When "
    "a client sends a request, the primary node gives it a sequence number and proposes it to"
    " the others. The replicas check the proposal, sign their votes, and wait until enough "
    "matching votes have arrived. A request is committed only when a quorum of honest nodes "
    "has seen the same order. If the primary is slow or dishonest, the replicas start a view "
    "change and elect a new primary. This is how the system stays safe even when some of its "
    "members fail or lie.\n"
    "Consensus is not magic. It is careful bookkeeping: every message carries a view, a "
    "sequence number and a digest, and every node remembers what it has promised. A node that"
    " receives two different proposals for the same slot knows that something is wrong. It "
    "keeps the evidence, refuses to vote twice, and tells the others. Because any two quorums"
    " overlap in at least one honest node, two different values can never both be committed.\n"
    "Operators like to know what their cluster is doing. The metrics page shows how many "
    "requests were ordered, how long they waited in the queue, and how often a view change "
    "happened. A healthy federation commits thousands of small writes every second, with "
    "latency measured in milliseconds. When a network link becomes slow, the numbers change, "
    "and the operator can see which node is falling behind.\n"
    "Keys matter. Every node has a secret signing key that never leaves its disk, and a "
    "public key that the others use to check its signatures. The configuration file lists the"
    " public keys of all members, their addresses, and the size of the quorum. Changing the "
    "membership is itself a request that must be ordered and committed, so that all nodes "
    "switch to the new configuration at the same point in the log.\n"
    "The weather was mild this morning, with a light wind from the west and a few clouds over"
    " the hills. By noon the sun came out, and the temperature rose to nineteen degrees. In "
    "the afternoon a short shower passed over the town, leaving the streets wet and the air "
    "fresh. The forecast for tomorrow says there will be more rain in the north, strong winds"
    " along the coast, and clear skies in the south. Farmers hope for a warm and dry week, "
    "because the wheat is almost ready for the harvest.\n"
    "In winter the lake freezes near the shore, and children skate on the ice when it is "
    "thick enough. Snow falls on the mountains first, then slowly reaches the valleys. Some "
    "days the fog is so dense that the ferry stays in the harbor and the birds sit quietly on"
    " the roofs. Spring arrives with long evenings, blossoms on the cherry trees, and the "
    "sound of water running down from the melting snow.\n"
    "To make a simple vegetable soup, start by chopping two onions, three carrots, a few "
    "potatoes and a stick of celery. Warm some olive oil in a large pot and cook the onions "
    "slowly until they are soft and golden. Add the other vegetables, stir for a minute, then"
    " pour in enough water or stock to cover them. Season with salt, pepper and a bay leaf, "
    "and let the soup simmer for about thirty minutes. When the potatoes are tender, taste "
    "it, add fresh herbs, and serve it hot with a slice of bread.\n"
    "Baking bread takes patience more than skill. Mix flour, water, salt and a little yeast, "
    "and knead the dough until it feels smooth and elastic. Cover the bowl with a cloth and "
    "let the dough rise in a warm place for an hour or two. Shape it into a loaf, let it rest"
    " again, and bake it in a hot oven until the crust is brown and the bottom sounds hollow "
    "when you tap it. The smell of fresh bread fills the whole house.\n"
    "For a quick dinner, cook pasta in plenty of salted water. While it boils, fry garlic in "
    "butter, add chopped tomatoes and a pinch of chili, and let the sauce thicken. Drain the "
    "pasta, toss it with the sauce, and finish with grated cheese and basil. A green salad "
    "with lemon and oil goes well with it, and so does a glass of cold water.\n"
    "The garden needs attention in every season. In spring we plant beans, peas, lettuce and "
    "radishes; in summer we water the tomatoes every evening and pick the strawberries before"
    " the birds find them. In autumn the apples are ready, the leaves turn red and yellow, "
    "and we collect them for the compost. Winter is the time to repair the fence, sharpen the"
    " tools and plan the next year.\n"
    "A good library is quiet but never empty. People come to read newspapers, to borrow "
    "novels, to study for their exams, or simply to sit near the window and think. The "
    "librarian knows where every book belongs and can find an old map or a forgotten letter "
    "in a few minutes. Many libraries now lend tools, seeds and musical instruments as well "
    "as books.\n"
    "Trains connect the small towns of the region with the capital. The morning train leaves "
    "at seven, stops at every station along the river, and arrives in the city a little after"
    " nine. Commuters read, work on their laptops, or watch the fields and forests pass by. "
    "On weekends the trains are full of families going to the mountains, with bicycles, "
    "backpacks and picnic baskets.\n"
    "Software is written by people for people. Clear names, small functions and honest error "
    "messages make a program easier to understand and to change. A test that fails should say"
    " what was expected and what happened instead. A log line should help the person who "
    "reads it at three in the morning, when the service is down and the users are waiting. "
    "Simple designs are easier to make correct, and correct systems are easier to make fast.\n"
    "When a node restarts after a crash, it reads its log from disk, checks the checksums of "
    "every record, and rebuilds its state. Then it asks the other nodes for the entries it "
    "missed while it was away. A checkpoint lets it skip the old history: the nodes agree on "
    "a digest of the state every few hundred requests, so that a recovering node can fetch a "
    "snapshot and verify it against that digest.\n"
    "Networks are unreliable. Messages can be delayed, duplicated, reordered or lost, and "
    "sometimes a link fails in one direction only. A robust protocol assumes all of this will"
    " happen and still makes progress once the network becomes stable again. Timers trigger "
    "retransmissions, sequence numbers detect duplicates, and signatures make sure that a "
    "forged message is rejected.\n"
    "The market opens early on Saturday. Farmers bring cheese, eggs, honey, apples and fresh "
    "flowers, and the baker sells warm rolls from a wooden cart. People meet friends, drink "
    "coffee, and compare the prices of the vegetables. By noon most of the stalls are empty, "
    "and the square is quiet again except for the pigeons looking for crumbs.\n"
    "Learning a new language is like building a house one brick at a time. Every day you add "
    "a few words, a new rule of grammar, or a phrase you heard on the radio. At first the "
    "sentences are short and simple; later they become longer and more natural. The most "
    "important thing is to practice often, to listen carefully, and not to be afraid of "
    "making mistakes.\n"
    "The model in this program is small and its weights are random, so its answers mean "
    "nothing. It exists to test the machinery: the loader, the tokenizer, the matrix kernels,"
    " the sampler and the batcher. Because every replica computes exactly the same numbers in"
    " the same order, all honest nodes produce the same tokens for the same request, and the "
    "federation can agree on the result of an inference just as it agrees on any other write.\n"
    "Questions are welcome. What happens if two clients send conflicting writes at the same "
    "time? Which node answers a read request, and how fresh is the answer? How many failures "
    "can the cluster survive? With four nodes it tolerates one faulty member; with seven "
    "nodes it tolerates two. In general, a federation of three times f plus one nodes "
    "survives f arbitrary failures.\n"
    "Every evening the old fisherman walks along the harbor, checks the ropes of his boat, "
    "and looks at the sky. He can tell from the color of the clouds whether the next morning "
    "will bring calm water or a storm. His grandchildren listen to his stories about the "
    "great winter, the lost nets, and the day a whale followed the boat all the way to the "
    "lighthouse.\n"
    "At night the observatory opens its dome, and the telescope turns slowly toward a distant"
    " galaxy. Astronomers measure the brightness of stars, photograph comets, and search for "
    "planets orbiting other suns. On a clear night without the moon, even a small pair of "
    "binoculars reveals thousands of faint points of light, the glowing band of the Milky "
    "Way, and sometimes a meteor streaking across the sky.\n"
    "The orchestra rehearsed the symphony for weeks. Violins, cellos, flutes, trumpets and "
    "drums each practiced their parts, and the conductor listened patiently, asking for "
    "softer passages here and sharper rhythms there. On the evening of the concert the hall "
    "was crowded; when the final chord faded, the audience stood up and applauded for several"
    " minutes.\n"
    "Hospitals work around the clock. Nurses check patients, doctors study results, and "
    "pharmacists prepare medicine with great precision. Ambulances arrive quietly at the "
    "emergency entrance, and a calm voice on the telephone explains what to do until help "
    "comes. Behind every treatment there are laboratories, volunteers, cleaners, cooks and "
    "engineers who keep the building running.\n"
    "Mountaineers leave the hut before sunrise, carrying ropes, helmets, crampons and warm "
    "jackets. The path climbs through meadows, across a glacier, and along a narrow ridge "
    "with spectacular views. Experienced guides watch the clouds carefully; if thunderstorms "
    "threaten, they turn back without hesitation, because the summit will still be there next"
    " summer.\n"
    "The ocean covers most of our planet. Currents carry warm water from the tropics toward "
    "the poles, whales migrate thousands of kilometers, and coral reefs shelter countless "
    "colorful fish. Scientists sail research vessels to collect samples, measure salinity, "
    "and study how rising temperatures affect marine ecosystems.\n"
    "Football unites neighborhoods. Every Sunday morning, teams of teenagers gather at the "
    "municipal field, stretch their muscles, and listen to their coach explaining tactics. "
    "Parents cheer from the benches, referees blow whistles, and after the match both teams "
    "shake hands, exchange jokes, and share oranges and lemonade.\n"
    "A bicycle is a marvelous invention: simple, efficient, quiet and affordable. Cyclists "
    "commute through traffic, tourists explore vineyards, and couriers deliver parcels across"
    " crowded districts. Maintaining one requires only basic tools: a pump, a wrench, spare "
    "tubes, chain lubricant and a little curiosity about mechanics.\n"
    "Volunteers organized the village festival. They decorated the square with lanterns and "
    "ribbons, built a wooden stage, and invited musicians, jugglers and storytellers. "
    "Grandmothers sold homemade cakes and jam, youngsters painted faces, and everybody danced"
    " until midnight beneath strings of glittering lights.\n"
    "Architecture reflects history. Medieval castles guarded valleys, cathedrals displayed "
    "remarkable craftsmanship, and modern towers of glass and steel express ambition and "
    "technology. Good buildings respect their surroundings, welcome daylight, conserve "
    "energy, and remain comfortable for generations of inhabitants.\n"
    "Elephants remember paths to distant waterholes, dolphins communicate with clicks and "
    "whistles, bees dance to describe flowers, and migrating geese navigate by landmarks, "
    "magnetism and starlight. Biologists observe animal behavior patiently, recording details"
    " in notebooks and photographs, hoping to understand intelligence, cooperation and "
    "survival.\n";

const char *synth_corpus(void)
{
    return corpus;
}

static const synth_config presets[] = {
    {"tiny", 64, 2, 4, 2, 176, 256, 512, GGUF_TENSOR_F32},
    {"small", 512, 8, 8, 8, 1408, 2048, 2048, GGUF_TENSOR_Q8_0},
};

const synth_config *synth_preset(const char *name)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

/* ---- vocabulary: BPE over the corpus ---- */

#define SP_MARK "\xe2\x96\x81" /* U+2581, SentencePiece's space */
#define FIRST_CHAR 0x21        /* '!' .. '~' are single pieces */
#define LAST_CHAR 0x7e
#define ID_MARK (3 + 256) /* "▁" */
#define ID_CHAR(c) (ID_MARK + 1 + ((c)-FIRST_CHAR))

/* A distinct training word (a run of symbol ids) and how often it occurs. */
typedef struct word {
    int32_t *sym;
    size_t len;
    uint32_t count;
} word;

typedef struct trainer {
    synth_vocab *v;
    size_t cap; /* n_vocab */
    word *words;
    size_t n_words;
    /* pair counts, open addressing; key = left << 32 | right, count 0 = empty */
    uint64_t *keys;
    uint32_t *counts;
    size_t mask;
    size_t *used; /* occupied slots, to clear them cheaply */
    size_t n_used;
} trainer;

static int add_piece(synth_vocab *v, const char *s, size_t len, float score, int32_t type)
{
    char *p = malloc(len + 1);
    if (!p)
        return FB_ENOMEM;
    memcpy(p, s, len);
    p[len] = 0;
    v->pieces[v->n] = p;
    v->scores[v->n] = score;
    v->types[v->n] = type;
    v->n++;
    return 0;
}

static int base_pieces(synth_vocab *v)
{
    static const char *const special[3] = {"<unk>", "<s>", "</s>"};
    static const int32_t special_type[3] = {TOK_TYPE_UNKNOWN, TOK_TYPE_CONTROL, TOK_TYPE_CONTROL};
    int rc = 0;
    for (int i = 0; rc == 0 && i < 3; i++)
        rc = add_piece(v, special[i], strlen(special[i]), 0.0f, special_type[i]);
    for (int b = 0; rc == 0 && b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        rc = add_piece(v, name, 6, 0.0f, TOK_TYPE_BYTE);
    }
    /* scores of single characters are set once the merges are counted */
    if (rc == 0)
        rc = add_piece(v, SP_MARK, 3, 0.0f, TOK_TYPE_NORMAL);
    for (int c = FIRST_CHAR; rc == 0 && c <= LAST_CHAR; c++) {
        char ch = (char)c;
        rc = add_piece(v, &ch, 1, 0.0f, TOK_TYPE_NORMAL);
    }
    return rc;
}

static int is_letter(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Split the corpus as the tokenizer sees text (a space before every chunk,
 * spaces as ▁) into training units: ▁ plus a run of letters, a run of
 * letters, or one other character (with the ▁ when it starts a chunk), so
 * that pieces stay word-like.  Units are appended to units[] as strings of
 * symbol ids terminated by -1. */
static int split_corpus(int32_t **out, size_t *n_out)
{
    size_t n = strlen(corpus), k = 0;
    int32_t *u = malloc((2 * n + 2) * sizeof *u);
    if (!u)
        return FB_ENOMEM;
    bool space = true; /* the tokenizer's space prefix */
    for (size_t i = 0; i < n;) {
        char c = corpus[i];
        if (c == ' ' || c == '\n') {
            space = true;
            i++;
            continue;
        }
        if ((unsigned char)c < FIRST_CHAR || (unsigned char)c > LAST_CHAR) {
            free(u);
            return FB_EINVAL;
        }
        if (space)
            u[k++] = ID_MARK;
        space = false;
        if (is_letter(c))
            while (i < n && is_letter(corpus[i]))
                u[k++] = ID_CHAR((unsigned char)corpus[i++]);
        else
            u[k++] = ID_CHAR((unsigned char)corpus[i++]);
        u[k++] = -1;
    }
    *out = u;
    *n_out = k;
    return 0;
}

static int cmp_units(const void *a, const void *b)
{
    const int32_t *x = *(const int32_t *const *)a, *y = *(const int32_t *const *)b;
    for (;; x++, y++) {
        if (*x != *y)
            return *x < *y ? -1 : 1;
        if (*x == -1)
            return 0;
    }
}

/* The distinct units with their counts, in a fixed (sorted) order. */
static int collect_words(trainer *tr)
{
    int32_t *u;
    size_t n;
    int rc = split_corpus(&u, &n);
    if (rc)
        return rc;
    size_t n_units = 0;
    for (size_t i = 0; i < n; i++)
        n_units += u[i] == -1;
    const int32_t **starts = malloc(n_units * sizeof *starts);
    tr->words = calloc(n_units, sizeof *tr->words);
    if (!starts || !tr->words) {
        free(starts);
        free(u);
        return FB_ENOMEM;
    }
    for (size_t i = 0, j = 0; i < n; j++) {
        starts[j] = &u[i];
        while (u[i] != -1)
            i++;
        i++;
    }
    qsort(starts, n_units, sizeof *starts, cmp_units);
    for (size_t i = 0; i < n_units && rc == 0; i++) {
        if (i && cmp_units(&starts[i], &starts[i - 1]) == 0) {
            tr->words[tr->n_words - 1].count++;
            continue;
        }
        size_t len = 0;
        while (starts[i][len] != -1)
            len++;
        word *w = &tr->words[tr->n_words++];
        w->sym = malloc(len * sizeof *w->sym);
        if (!w->sym) {
            rc = FB_ENOMEM;
            break;
        }
        memcpy(w->sym, starts[i], len * sizeof *w->sym);
        w->len = len;
        w->count = 1;
    }
    free(starts);
    free(u);
    return rc;
}

static void count_pair(trainer *tr, uint64_t key, uint32_t c)
{
    size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & tr->mask;
    while (tr->counts[i] && tr->keys[i] != key)
        i = (i + 1) & tr->mask;
    if (!tr->counts[i]) {
        tr->keys[i] = key;
        tr->used[tr->n_used++] = i;
    }
    tr->counts[i] += c;
}

/* The most frequent adjacent pair (ties: the smallest key), or 0 if every
 * word is a single symbol.  Keys are never 0: ▁ and characters have ids > 0. */
static uint64_t best_pair(trainer *tr)
{
    for (size_t w = 0; w < tr->n_words; w++)
        for (size_t i = 0; i + 1 < tr->words[w].len; i++)
            count_pair(tr,
                       (uint64_t)(uint32_t)tr->words[w].sym[i] << 32 |
                           (uint32_t)tr->words[w].sym[i + 1],
                       tr->words[w].count);
    uint64_t best = 0;
    uint32_t best_count = 0;
    for (size_t k = 0; k < tr->n_used; k++) {
        size_t i = tr->used[k];
        if (tr->counts[i] > best_count || (tr->counts[i] == best_count && tr->keys[i] < best)) {
            best = tr->keys[i];
            best_count = tr->counts[i];
        }
        tr->counts[i] = 0;
    }
    tr->n_used = 0;
    return best;
}

static int32_t find_piece(const synth_vocab *v, const char *s, size_t len)
{
    for (size_t i = ID_MARK; i < v->n; i++)
        if (strlen(v->pieces[i]) == len && memcmp(v->pieces[i], s, len) == 0)
            return (int32_t)i;
    return -1;
}

/* Replace every (l, r) in every word, left to right, by id. */
static void apply_merge(trainer *tr, int32_t l, int32_t r, int32_t id)
{
    for (size_t w = 0; w < tr->n_words; w++) {
        word *wd = &tr->words[w];
        size_t o = 0;
        for (size_t i = 0; i < wd->len; i++) {
            if (i + 1 < wd->len && wd->sym[i] == l && wd->sym[i + 1] == r) {
                wd->sym[o++] = id;
                i++;
            } else {
                wd->sym[o++] = wd->sym[i];
            }
        }
        wd->len = o;
    }
}

static int learn_merges(trainer *tr)
{
    synth_vocab *v = tr->v;
    char buf[2 * TOK_MAX_PIECE_LEN];
    while (v->n < tr->cap) {
        uint64_t key = best_pair(tr);
        if (!key)
            break;
        int32_t l = (int32_t)(key >> 32), r = (int32_t)(uint32_t)key;
        size_t ll = strlen(v->pieces[l]), rl = strlen(v->pieces[r]);
        if (ll + rl > TOK_MAX_PIECE_LEN)
            return FB_ETOOBIG;
        memcpy(buf, v->pieces[l], ll);
        memcpy(buf + ll, v->pieces[r], rl);
        /* a join already made from another split keeps its earlier rank */
        int32_t id = find_piece(v, buf, ll + rl);
        if (id < 0) {
            id = (int32_t)v->n;
            int rc = add_piece(v, buf, ll + rl, -(float)(v->n_merges + 1), TOK_TYPE_NORMAL);
            if (rc)
                return rc;
            v->n_merges++;
        }
        apply_merge(tr, l, r, id);
    }
    return 0;
}

static void trainer_free(trainer *tr)
{
    for (size_t i = 0; i < tr->n_words; i++)
        free(tr->words[i].sym);
    free(tr->words);
    free(tr->keys);
    free(tr->counts);
    free(tr->used);
}

void synth_vocab_free(synth_vocab *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++)
        free(v->pieces[i]);
    free(v->pieces);
    free(v->scores);
    free(v->types);
    memset(v, 0, sizeof *v);
}

int synth_vocab_build(uint32_t n_vocab, synth_vocab *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    if (n_vocab <= SYNTH_BASE_VOCAB || n_vocab > TOK_MAX_VOCAB)
        return fb_errf(err, errlen, FB_EINVAL, "synth: vocabulary size %u must be %d to %u",
                       n_vocab, SYNTH_BASE_VOCAB + 1, TOK_MAX_VOCAB);
    trainer tr = {.v = v, .cap = n_vocab};
    size_t slots = 1;
    while (slots < 4 * sizeof corpus)
        slots <<= 1;
    tr.mask = slots - 1;
    v->pieces = calloc(n_vocab, sizeof *v->pieces);
    v->scores = calloc(n_vocab, sizeof *v->scores);
    v->types = calloc(n_vocab, sizeof *v->types);
    tr.keys = calloc(slots, sizeof *tr.keys);
    tr.counts = calloc(slots, sizeof *tr.counts);
    tr.used = calloc(slots, sizeof *tr.used);
    int rc = FB_ENOMEM;
    if (v->pieces && v->scores && v->types && tr.keys && tr.counts && tr.used &&
        (rc = base_pieces(v)) == 0 && (rc = collect_words(&tr)) == 0)
        rc = learn_merges(&tr);
    trainer_free(&tr);
    /* single characters score below every merge */
    for (size_t i = ID_MARK; rc == 0 && i < SYNTH_BASE_VOCAB; i++)
        v->scores[i] = -(float)(v->n_merges + 1 + (i - ID_MARK));
    for (size_t k = 0; rc == 0 && v->n < n_vocab; k++) {
        char name[32];
        int len = snprintf(name, sizeof name, "<unused_%zu>", k);
        rc = add_piece(v, name, (size_t)len, 0.0f, TOK_TYPE_UNUSED);
    }
    if (rc) {
        synth_vocab_free(v);
        return fb_errf(err, errlen, rc, "synth: cannot build the vocabulary: %s", fb_strerror(rc));
    }
    return 0;
}

/* ---- weights ---- */

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Each tensor's stream depends on the seed and its name only (FNV-1a), so
 * the order tensors are generated in does not matter. */
static void rng_seed(rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    uint64_t x = seed ^ h;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

/* Approximately N(0, 1): the sum of four uniforms on [0, 1) has mean 2 and
 * variance 1/3.  Plain float arithmetic, so the bits are the same everywhere
 * (the library is built with -ffp-contract=off). */
static float rng_normal(rng *r)
{
    float s = 0.0f;
    for (int i = 0; i < 4; i++)
        s += (float)(rng_next(r) >> 40) * 0x1p-24f;
    return (s - 2.0f) * 1.7320508f;
}

typedef struct wdesc {
    char name[48];
    uint32_t n_dims;
    uint64_t ne[2];
    uint32_t type;
    float mean, std;
    uint64_t seed;
} wdesc;

static int fill_weights(void *arg, void *dst, uint64_t nbytes, char *err, size_t errlen)
{
    const wdesc *d = arg;
    size_t n = (size_t)d->ne[0];
    uint64_t rows = d->n_dims > 1 ? d->ne[1] : 1;
    size_t row_bytes = (size_t)(nbytes / rows);
    float *tmp = malloc(n * sizeof *tmp);
    if (!tmp)
        return fb_errf(err, errlen, FB_ENOMEM, "synth: out of memory generating '%s'", d->name);
    rng r;
    rng_seed(&r, d->seed, d->name);
    for (uint64_t row = 0; row < rows; row++) {
        uint8_t *out = (uint8_t *)dst + row * row_bytes;
        for (size_t i = 0; i < n; i++)
            tmp[i] = d->mean + d->std * rng_normal(&r);
        if (d->type == GGUF_TENSOR_F32) {
            memcpy(out, tmp, n * sizeof *tmp);
        } else if (d->type == GGUF_TENSOR_F16) {
            for (size_t i = 0; i < n; i++) {
                uint16_t h = kn_f32_to_fp16(tmp[i]);
                memcpy(out + 2 * i, &h, 2);
            }
        } else {
            kn_quantize_q8_weights(tmp, (kn_q8 *)out, (int)n);
        }
    }
    free(tmp);
    return 0;
}

/* 1 / sqrt(n) without libm: Newton steps from a power-of-two guess,
 * rounded to float at the end.  Only scales the weights, so any fixed
 * answer would do; this one is the same on every machine. */
static float inv_sqrt(uint32_t n)
{
    double x = 1.0;
    while (x * x * n > 1.0) /* start below the root, where Newton converges */
        x *= 0.5;
    for (int i = 0; i < 30; i++)
        x = x * (1.5 - 0.5 * n * x * x);
    return (float)x;
}

static int check_config(const synth_config *c, uint32_t type, char *err, size_t errlen)
{
    const uint32_t lim = 1u << 16;
    if (type != GGUF_TENSOR_F32 && type != GGUF_TENSOR_F16 && type != GGUF_TENSOR_Q8_0)
        return fb_errf(err, errlen, FB_EINVAL, "synth: weight type %u is not F32, F16 or Q8_0",
                       type);
    if (!c->n_embd || !c->n_layer || !c->n_head || !c->n_head_kv || !c->n_ff || !c->n_ctx ||
        c->n_embd > lim || c->n_ff > lim || c->n_layer > 1000 || c->n_ctx > (1u << 24))
        return fb_errf(err, errlen, FB_EINVAL,
                       "synth: '%s': a size is 0 or too large (embd, ff <= %u, layers <= 1000)",
                       c->name, lim);
    if (c->n_embd % c->n_head || c->n_head % c->n_head_kv || (c->n_embd / c->n_head) % 2)
        return fb_errf(err, errlen, FB_EINVAL,
                       "synth: '%s': n_embd %u, %u heads, %u kv heads: the head size must be "
                       "even and the heads a multiple of the kv heads",
                       c->name, c->n_embd, c->n_head, c->n_head_kv);
    if (c->n_vocab <= SYNTH_BASE_VOCAB || c->n_vocab > TOK_MAX_VOCAB)
        return fb_errf(err, errlen, FB_EINVAL, "synth: '%s': vocabulary size %u must be %d to %u",
                       c->name, c->n_vocab, SYNTH_BASE_VOCAB + 1, TOK_MAX_VOCAB);
    return 0;
}

typedef struct planner {
    wdesc *d;
    size_t n;
    uint32_t type; /* of the matrices */
    uint64_t seed;
} planner;

static void plan_mat(planner *p, const char *name, uint64_t n_in, uint64_t n_out, float std)
{
    wdesc *d = &p->d[p->n++];
    /* as the quantizer does: Q8_0 rows must hold whole blocks (tiny's ffn_down
     * has rows of 176), so such a matrix stays F32 */
    uint32_t type = p->type == GGUF_TENSOR_Q8_0 && n_in % KN_QK ? GGUF_TENSOR_F32 : p->type;
    *d = (wdesc){.n_dims = 2, .ne = {n_in, n_out}, .type = type, .std = std, .seed = p->seed};
    snprintf(d->name, sizeof d->name, "%s", name);
}

static void plan_norm(planner *p, const char *name, uint64_t n)
{
    wdesc *d = &p->d[p->n++];
    *d = (wdesc){.n_dims = 1,
                 .ne = {n, 1},
                 .type = GGUF_TENSOR_F32,
                 .mean = 1.0f,
                 .std = 0.1f,
                 .seed = p->seed};
    snprintf(d->name, sizeof d->name, "%s", name);
}

static const char *blk(char *buf, size_t len, uint32_t layer, const char *what)
{
    snprintf(buf, len, "blk.%u.%s.weight", layer, what);
    return buf;
}

/* The tensor list in llama.cpp's order, with each one's distribution. */
static wdesc *plan_tensors(const synth_config *c, uint32_t type, uint64_t seed, size_t *n)
{
    planner p = {.d = calloc(3 + 9 * (size_t)c->n_layer, sizeof *p.d), .type = type, .seed = seed};
    if (!p.d)
        return NULL;
    uint32_t e = c->n_embd, kv = c->n_embd / c->n_head * c->n_head_kv, ff = c->n_ff;
    float s_e = inv_sqrt(e);
    char nm[48];
    plan_mat(&p, "token_embd.weight", e, c->n_vocab, 0.5f);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        plan_norm(&p, blk(nm, sizeof nm, l, "attn_norm"), e);
        plan_mat(&p, blk(nm, sizeof nm, l, "attn_q"), e, e, s_e);
        plan_mat(&p, blk(nm, sizeof nm, l, "attn_k"), e, kv, s_e);
        plan_mat(&p, blk(nm, sizeof nm, l, "attn_v"), e, kv, s_e);
        plan_mat(&p, blk(nm, sizeof nm, l, "attn_output"), e, e, 0.5f * s_e);
        plan_norm(&p, blk(nm, sizeof nm, l, "ffn_norm"), e);
        plan_mat(&p, blk(nm, sizeof nm, l, "ffn_gate"), e, ff, s_e);
        plan_mat(&p, blk(nm, sizeof nm, l, "ffn_up"), e, ff, s_e);
        plan_mat(&p, blk(nm, sizeof nm, l, "ffn_down"), ff, e, 0.5f * inv_sqrt(ff));
    }
    plan_norm(&p, "output_norm.weight", e);
    plan_mat(&p, "output.weight", e, c->n_vocab, 2.0f * s_e);
    *n = p.n;
    return p.d;
}

static void add_hparams(gguf_w *w, const synth_config *c, uint32_t type, uint64_t seed)
{
    char name[64], desc[160];
    snprintf(name, sizeof name, "fedbft-synth-%s", c->name);
    snprintf(desc, sizeof desc,
             "deterministic random-weight test model (fedbft model synth --preset %s --seed "
             "%llu)",
             c->name, (unsigned long long)seed);
    gguf_w_add_str(w, "general.architecture", "llama");
    gguf_w_add_str(w, "general.name", name);
    gguf_w_add_str(w, "general.description", desc);
    gguf_w_add_u32(w, "llama.context_length", c->n_ctx);
    gguf_w_add_u32(w, "llama.embedding_length", c->n_embd);
    gguf_w_add_u32(w, "llama.block_count", c->n_layer);
    gguf_w_add_u32(w, "llama.feed_forward_length", c->n_ff);
    gguf_w_add_u32(w, "llama.attention.head_count", c->n_head);
    gguf_w_add_u32(w, "llama.attention.head_count_kv", c->n_head_kv);
    gguf_w_add_u32(w, "llama.rope.dimension_count", c->n_embd / c->n_head);
    gguf_w_add_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_w_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_w_add_u32(w, "llama.vocab_size", c->n_vocab);
    /* llama_ftype: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7 */
    gguf_w_add_u32(w, "general.file_type",
                   type == GGUF_TENSOR_Q8_0  ? 7
                   : type == GGUF_TENSOR_F16 ? 1
                                             : 0);
}

static void add_vocab(gguf_w *w, const synth_vocab *v)
{
    gguf_w_add_str(w, "tokenizer.ggml.model", "llama");
    gguf_w_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->pieces, NULL, v->n);
    gguf_w_add_arr_f32(w, "tokenizer.ggml.scores", v->scores, v->n);
    gguf_w_add_arr_i32(w, "tokenizer.ggml.token_type", v->types, v->n);
    gguf_w_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_w_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_w_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_w_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    gguf_w_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    gguf_w_add_bool(w, "tokenizer.ggml.add_space_prefix", true);
}

int synth_write(const synth_config *cfg, uint32_t type, uint64_t seed, const char *path,
                unsigned flags, uint64_t *size, char *err, size_t errlen)
{
    int rc = check_config(cfg, type, err, errlen);
    if (rc)
        return rc;
    synth_vocab v;
    if ((rc = synth_vocab_build(cfg->n_vocab, &v, err, errlen)))
        return rc;
    gguf_w *w = NULL;
    size_t nt = 0;
    wdesc *plan = plan_tensors(cfg, type, seed, &nt);
    if (!plan || gguf_w_new(&w) != 0) {
        rc = fb_errf(err, errlen, FB_ENOMEM, "synth: out of memory");
        goto out;
    }
    /* errors of the adds are sticky and reported by the write */
    add_hparams(w, cfg, type, seed);
    add_vocab(w, &v);
    /* last, where `model quantize` appends it: quantizing the F32 model then
     * gives exactly the file synthesized with Q8_0 */
    if (type == GGUF_TENSOR_Q8_0)
        gguf_w_add_u32(w, "general.quantization_version", 2);
    for (size_t i = 0; i < nt; i++)
        gguf_w_add_tensor_fn(w, plan[i].name, plan[i].type, plan[i].n_dims, plan[i].ne,
                             gguf_w_tensor_nbytes(plan[i].type, plan[i].n_dims, plan[i].ne),
                             fill_weights, &plan[i]);
    rc = gguf_w_write(w, path, flags, size, err, errlen);
out:
    gguf_w_free(w);
    free(plan);
    synth_vocab_free(&v);
    return rc;
}
