#!/usr/bin/env bash
# Transcribes a batch of recordings as one durable job on the demo's speech-recognition
# service (pocketsphinx with a sentence grammar), SIGKILLs the primary recogniser
# partway through, and checks that every recording got exactly one transcript, the
# right one, whichever instance made it.
#
# Run `npm start` in another terminal first. Then: bash examples/jobs/asr-batch.sh [count]
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-48}
DIR=${RECORDINGS:-/tmp/understudy-recordings}
U() { node dist/cli/main.js "$@" -c examples/demo/understudy.yaml; }
json() { node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const v=JSON.parse(s);console.log($1)})"; }

echo "making $COUNT recordings in $DIR (espeak-ng speaking the grammar's sentences)"
node examples/asr-server/make-recordings.mjs --out "$DIR" --count "$COUNT" >/dev/null

JOB=$(U jobs submit --service asr --path /v1/audio/transcriptions --files "$DIR"/rec-*.wav \
        --concurrency 2 --name "recordings, transcribed" --json | json 'v.id')
echo "submitted $JOB: $COUNT recordings"

until [ "$(U jobs show "$JOB" --json | json 'v.done')" -ge $((COUNT / 4)) ]; do sleep 0.2; done
PID=$(U status --json | json "v.asr.instances.find(i=>i.name==='primary').pid")
echo "killing the primary recogniser (pid $PID) with SIGKILL at $(U jobs show "$JOB" --json | json 'v.done')/$COUNT"
kill -9 "$PID"

U jobs watch "$JOB"
U jobs results "$JOB" -o "$DIR/results.jsonl"
node -e "
  const fs = require('fs'), path = require('path');
  const dir = process.argv[1];
  const expected = new Map(fs.readFileSync(path.join(dir, 'expected.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).map((e) => [path.basename(e.file), e.text]));
  const files = fs.readdirSync(dir).filter((f) => /^rec-.*\.wav$/.test(f)).sort();
  const results = fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  let right = 0; const by = {};
  results.forEach((r, i) => { by[r.instance] = (by[r.instance] ?? 0) + 1; if (r.json && r.json.text === expected.get(files[i])) right++; else console.log('  wrong: ' + files[i] + ': ' + JSON.stringify(r.json ?? r.error)); });
  console.log(results.length + ' results for ' + files.length + ' recordings; ' + right + ' transcripts exactly right; by instance: ' + JSON.stringify(by));
" "$DIR"
