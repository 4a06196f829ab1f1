#!/usr/bin/env bash
# An external acceptance suite: gmqtt 0.8.0's live-broker tests (tests/test_mqtt5.py, from its
# PyPI sdist, unpacked here and never committed) against mqkit's MQTT gateway and, in the same
# run, against Debian's mosquitto, side by side. Fails unless exactly 16 tests ran against mqkit
# and mqkit passed all 16 but the tests that ask for what MQTT 5 forbids (NONCONFORMING below,
# which both servers must fail), and never fails a test mosquitto passes. gmqtt's wheel would
# put a top-level "tests" package in site-packages, so the suite runs from the unpacked sdist
# in a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/mqkit-gmqtt.XXXXXX)
chmod 755 "$work"   # mosquitto drops to its own user and must read the certificate
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet pytest==9.2.0 pytest-asyncio==1.5.0
"$work/venv/bin/python" -m pip download --quiet --no-deps --no-binary gmqtt gmqtt==0.8.0 -d "$work/sdist"
tar xzf "$work/sdist/gmqtt-0.8.0.tar.gz" -C "$work"
suite="$work/gmqtt-0.8.0"

# test_basic_ssl connects to 127.0.0.1:8883 with ssl=True: both servers get a TLS listener
# there with a certificate from a throwaway CA that the suite trusts through SSL_CERT_FILE.
.venv/bin/python - "$work" <<'EOF'
import sys, trustme
d = sys.argv[1]
ca = trustme.CA()
cert = ca.issue_cert("127.0.0.1", "localhost")
ca.cert_pem.write_to_path(f"{d}/ca.pem")
cert.private_key_pem.write_to_path(f"{d}/key.pem")
cert.cert_chain_pems[0].write_to_path(f"{d}/cert.pem")
EOF
chmod 644 "$work"/*.pem

wait_for_port() {  # port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

run_suite() {  # name port
    echo "-- gmqtt tests/test_mqtt5.py against $1"
    (cd "$suite" && env -u USERNAME -u PASSWORD -u TOKEN HOST=127.0.0.1 PORT="$2" \
        SSL_CERT_FILE="$work/ca.pem" "$work/venv/bin/python" -m pytest -p no:cacheprovider \
        -q -W ignore::DeprecationWarning tests/test_mqtt5.py --junitxml "$work/$1.xml") \
        > "$work/$1.log" 2>&1 || true
    tail -n 1 "$work/$1.log"
}

.venv/bin/python -m mqkit.protocols.mqtt.serve --port 18830 --tls-port 8883 \
    --cert "$work/cert.pem" --key "$work/key.pem" > "$work/mqkit-server.log" 2>&1 &
server_pid=$!
wait_for_port 18830
wait_for_port 8883
run_suite mqkit 18830
kill "$server_pid"; wait "$server_pid" || true; server_pid=""

cat > "$work/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
listener 18831 127.0.0.1
listener 8883 127.0.0.1
certfile $work/cert.pem
keyfile $work/key.pem
EOF
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto-server.log" 2>&1 &
server_pid=$!
wait_for_port 18831
wait_for_port 8883
run_suite mosquitto 18831
kill "$server_pid"; wait "$server_pid" || true; server_pid=""

.venv/bin/python - "$work/mqkit.xml" "$work/mosquitto.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

EXPECTED = 16  # tests/test_mqtt5.py of gmqtt 0.8.0
# Tests that ask a server for what MQTT 5 forbids it to do; mqkit (and mosquitto) fail them.
NONCONFORMING = {
    # gmqtt.Client("") sends a uuid of its own as client id, then expects the CONNACK to carry
    # an Assigned Client Identifier: MQTT 5 3.2.2.3.7 has one only for an empty client id, and
    # libmosquitto v5 clients (mosquitto_sub -V 5 -i ID) refuse one they did not ask for as a
    # protocol error (tests/protocols/mqtt/test_wire_strings.py).
    "test_assigned_clientid",
}

def results(path):
    out = {}
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        print(f"no test results in {path}: {exc}")
        return out
    for case in tree.iter("testcase"):
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        out[case.get("name")] = "skip" if skipped else ("FAIL" if bad else "pass")
    return out

mqkit, mosq = results(sys.argv[1]), results(sys.argv[2])
print(f"{'test':45} {'mqkit':6} {'mosquitto 2.0.11':6}")
for name in sorted(set(mqkit) | set(mosq)):
    print(f"{name:45} {mqkit.get(name, '-'):6} {mosq.get(name, '-'):6}")
count = lambda r, v: sum(1 for x in r.values() if x == v)
print(f"{'total passed':45} {count(mqkit, 'pass'):<6} {count(mosq, 'pass'):<6}")
problems = []
if len(mqkit) != EXPECTED:
    problems.append(f"{len(mqkit)} tests ran against mqkit, not {EXPECTED}")
conforming = EXPECTED - len(NONCONFORMING)
failed = sorted(n for n, v in mqkit.items() if v != "pass" and n not in NONCONFORMING)
if failed:
    problems.append(f"mqkit passed {count(mqkit, 'pass')} of {EXPECTED}; not passed: {failed}")
wrong = sorted(n for n in NONCONFORMING if mqkit.get(n) != "FAIL" or mosq.get(n) != "FAIL")
if wrong:  # the reason given above no longer holds: look again
    problems.append(f"nonconforming tests not failed by both servers: {wrong}")
regressions = sorted(n for n, v in mosq.items() if v == "pass" and mqkit.get(n) != "pass")
if regressions:
    problems.append(f"mqkit fails what mosquitto passes: {regressions}")
if problems:
    print("gmqtt gate FAILED:", *problems, sep="\n  ")
    sys.exit(1)
print(
    f"gmqtt gate passed: mqkit {conforming}/{conforming} of the conforming tests "
    f"(failed as it must: {sorted(NONCONFORMING)})"
)
EOF
