#!/usr/bin/env bash
# Speaks examples/jobs/script.txt (several hundred sentences) as one durable job on
# the demo's text-to-speech service, SIGKILLs the primary model server a third of
# the way through, and shows the job finishing on the hot standby: every sentence
# spoken once, joined in order into one WAV file.
#
# Run `npm start` in another terminal first. Then: bash examples/jobs/tts-failover.sh [out.wav]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-lighthouses.wav}
U() { node dist/cli/main.js "$@" -c examples/demo/understudy.yaml; }
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const v=JSON.parse(s);console.log($1)})"; }

JOB=$(U jobs submit --service tts --path /v1/audio/speech --sentences examples/jobs/script.txt \
        --field input --join wav --name "lighthouses, read aloud" --json | json 'v.id')
TOTAL=$(U jobs show "$JOB" --json | json 'v.total')
echo "submitted $JOB: $TOTAL sentences"

# About a third of the way in (polling lags a little), the primary dies the hard way.
until [ "$(U jobs show "$JOB" --json | json 'v.done')" -ge $((TOTAL / 4)) ]; do sleep 0.2; done
PID=$(U status --json | json "v.tts.instances.find(i=>i.name==='primary').pid")
echo "killing the primary TTS server (pid $PID) with SIGKILL at $(U jobs show "$JOB" --json | json 'v.done')/$TOTAL"
kill -9 "$PID"

U jobs watch "$JOB"
U jobs output "$JOB" -o "$OUT"
echo
echo "Who spoke which sentences (instance: items):"
U jobs results "$JOB" | node -e "
  const counts = {}; let lines = 0;
  require('readline').createInterface({ input: process.stdin }).on('line', (l) => { const r = JSON.parse(l); lines++; counts[r.instance] = (counts[r.instance] ?? 0) + 1; })
    .on('close', () => { for (const [k, v] of Object.entries(counts)) console.log('  ' + k + ': ' + v); console.log('  ' + lines + ' results, one per sentence'); });"
U events --type active-changed --since 10m | tail -3
