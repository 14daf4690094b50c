# lib.sh - helpers the integration scripts share (source it; sets fails=0).
#   check DESCRIPTION COMMAND...          run COMMAND, print ok/FAIL, count failures
#   wait_for DESCRIPTION SECONDS COMMAND... poll COMMAND until it succeeds or the deadline passes
#   skip DESCRIPTION                       report a check that cannot run here
fails=0
skips=0
check() {
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
wait_for() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then echo "FAIL $what (after ${secs}s)"; fails=$((fails + 1)); return 1; fi
        sleep 0.2
    done
    echo "ok   $what"
}
skip() { echo "skip $1"; skips=$((skips + 1)); }
