# Sourced by the bench scripts: what they share.

# wait_port PORT [TRIES]: until something listens on 127.0.0.1:PORT (TRIES x 50 ms, default
# 100), else exit 1.
wait_port() {
    for _ in $(seq "${2:-100}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; exit 1
}
