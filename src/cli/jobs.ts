import { createWriteStream, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Command, InvalidArgumentError } from 'commander';
import type { AdminClient, JobView } from '../api/index.js';
import { formatDuration } from '../config/index.js';
import { UnderstudyError } from '../core/index.js';
import { formatJob, formatJobs, progressLine } from './format.js';

type ClientFor = (configFile: string) => AdminClient;

interface SubmitOptions {
  config: string;
  service?: string;
  lines?: string;
  sentences?: string;
  files?: string[];
  path?: string;
  method?: string;
  field?: string;
  set: string[];
  header: string[];
  concurrency?: number;
  itemTimeout?: string;
  retries?: number;
  join?: string;
  name?: string;
  key?: string;
  watch?: boolean;
  json?: boolean;
}

/** `understudy jobs ...`: submit, follow and collect durable jobs through the admin API. */
export function jobCommands(configOption: readonly [string, string, string], client: ClientFor): Command {
  const jobs = new Command('jobs')
    .description('durable jobs: long work split into items, each recorded once, resumed after failures and restarts')
    .addHelpText(
      'after',
      `
Examples:
  # speak a script, one item per sentence, joined into one WAV file
  understudy jobs submit --service tts --path /v1/audio/speech --sentences script.txt --field input --join wav --watch
  understudy jobs output <job> -o script.wav

  # transcribe every recording in a folder
  understudy jobs submit --service asr --path /v1/audio/transcriptions --files recordings/*.wav --watch
  understudy jobs results <job> -o transcripts.jsonl

  # a job written as JSON (see docs/jobs.md for the format)
  understudy jobs submit job.json`,
    );

  jobs
    .command('submit')
    .description('submit a job: from a JSON file (or - for stdin), or built from --lines, --sentences or --files')
    .argument('[file]', 'a job as JSON: {"service", "items": [...], "defaults"?, "concurrency"?, ...}')
    .option('-s, --service <name>', 'the service the items go to')
    .option('--lines <file>', 'one item per non-empty line of this text file')
    .option('--sentences <file>', 'one item per sentence of this text file')
    .option('--files <paths...>', 'one item per file, the file as the request body')
    .option('--path <path>', 'the path each item is sent to on the model server, e.g. /v1/audio/speech')
    .option('--method <method>', 'the method of each item (default POST)')
    .option('--field <name>', 'send each line or sentence as this field of a JSON body (default: the text as the body)')
    .option('--set <key=value>', 'another field of each JSON body (repeatable; values that parse as JSON are JSON)', collect, [])
    .option('-H, --header <header>', '"Name: value" header on every item (repeatable)', collect, [])
    .option('--concurrency <n>', 'items at once (default: jobs.concurrency, 4)', positiveInt)
    .option('--item-timeout <duration>', 'longest run of one item, e.g. 10m (default: jobs.itemTimeout)')
    .option('--retries <n>', 'further tries of a failed item (default: jobs.retries, 3)', wholeNumber)
    .option('--join <mode>', 'when the job ends, join the results into one file: wav or concat')
    .option('--name <name>', 'a name to recognise the job by')
    .option('--key <key>', 'an idempotency key: submitting again with it gives the same job, not a second one')
    .option('-w, --watch', 'follow the job with a progress bar until it ends')
    .option('--json', 'print the job as JSON')
    .option(...configOption)
    .action(async (file: string | undefined, options: SubmitOptions) => {
      const job = buildJob(file, options);
      const api = client(options.config);
      const { job: view, created } = await api.call<{ job: JobView; created: boolean }>(
        'POST',
        '/v1/jobs',
        job,
        options.key ? { 'idempotency-key': options.key } : {},
      );
      if (options.json) console.log(JSON.stringify(view, null, 2));
      else console.log(`${view.id}: ${created ? 'submitted' : 'already submitted with this key'}, ${view.total} items (${view.service})`);
      if (options.watch) process.exitCode = await watch(api, view.id);
    });

  jobs
    .command('list')
    .description('list jobs, newest first')
    .option('--state <state>', 'only jobs in this state: running, paused, succeeded, failed, cancelled')
    .option('-s, --service <name>', 'only jobs of this service')
    .option('-n, --limit <count>', 'at most this many', wholeNumber, 20)
    .option('--json', 'print JSON')
    .option(...configOption)
    .action(async (options: { state?: string; service?: string; limit: number; json?: boolean; config: string }) => {
      const query = new URLSearchParams({ limit: String(options.limit) });
      if (options.state) query.set('state', options.state);
      if (options.service) query.set('service', options.service);
      const { jobs: list } = await client(options.config).call<{ jobs: JobView[] }>('GET', `/v1/jobs?${query}`);
      console.log(options.json ? JSON.stringify(list, null, 2) : formatJobs(list));
    });

  jobs
    .command('show')
    .description('show a job: state, progress, rate, ETA and where its results are')
    .argument('<job>', 'the job id')
    .option('--json', 'print JSON')
    .option(...configOption)
    .action(async (id: string, options: { json?: boolean; config: string }) => {
      const { job } = await client(options.config).call<{ job: JobView }>('GET', `/v1/jobs/${enc(id)}`);
      console.log(options.json ? JSON.stringify(job, null, 2) : formatJob(job));
    });

  jobs
    .command('watch')
    .description('follow a job with a progress bar and ETA until it ends; exits 0 if every item succeeded, else 1')
    .argument('<job>', 'the job id')
    .option(...configOption)
    .action(async (id: string, options: { config: string }) => {
      process.exitCode = await watch(client(options.config), id);
    });

  for (const [verb, description] of [
    ['pause', 'stop starting items; items in flight finish (the job stays paused across restarts)'],
    ['resume', 'continue a paused job'],
    ['cancel', 'stop a job for good: items in flight are abandoned, results so far are kept'],
  ] as const) {
    jobs
      .command(verb)
      .description(description)
      .argument('<job>', 'the job id')
      .option(...configOption)
      .action(async (id: string, options: { config: string }) => {
        const { job } = await client(options.config).call<{ job: JobView }>('POST', `/v1/jobs/${enc(id)}/${verb}`, {});
        console.log(`${job.id}: ${job.state} (${job.done}/${job.total} done)`);
      });
  }

  jobs
    .command('results')
    .description('the result of every item as JSON Lines, in item order (also written to results.jsonl when the job ends)')
    .argument('<job>', 'the job id')
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .option(...configOption)
    .action(async (id: string, options: { output?: string; config: string }) => {
      const body = await client(options.config).stream(`/v1/jobs/${enc(id)}/results`);
      await pipeline(body, options.output ? createWriteStream(options.output) : process.stdout, { end: Boolean(options.output) });
    });

  jobs
    .command('output')
    .description('the joined output of a job that ended (submitted with --join wav or concat)')
    .argument('<job>', 'the job id')
    .requiredOption('-o, --output <file>', 'write it to this file')
    .option(...configOption)
    .action(async (id: string, options: { output: string; config: string }) => {
      const body = await client(options.config).stream(`/v1/jobs/${enc(id)}/output`);
      await pipeline(body, createWriteStream(options.output));
      console.log(`${options.output}: ${statSync(options.output).size} bytes`);
    });

  jobs
    .command('prune')
    .description('remove finished jobs (succeeded, failed, cancelled) past the retention, with their results and files')
    .option('--older-than <duration>', 'remove those finished longer ago than this, e.g. 7d (default: jobs.retention.maxAge)')
    .option('--keep <count>', 'keep at most this many finished jobs, the newest (default: jobs.retention.maxCount)', (value) => {
      if (!/^\d+$/.test(value)) throw new InvalidArgumentError('a whole number of jobs');
      return Number(value);
    })
    .option('--dry-run', 'say which jobs would be removed, remove nothing')
    .option('--json', 'print the answer as JSON')
    .option(...configOption)
    .addHelpText(
      'after',
      `
Understudy does this by itself at start and every hour, by jobs.retention (default: finished
jobs older than 30d go, and at most 1000 are kept). Running and paused jobs are never removed.
The files a job's items were read from (--files) are yours and stay.`,
    )
    .action(async (options: { olderThan?: string; keep?: number; dryRun?: boolean; json?: boolean; config: string }) => {
      const answer = await client(options.config).call<PruneAnswer>('POST', '/v1/jobs/prune', {
        dryRun: options.dryRun === true,
        ...(options.olderThan === undefined ? {} : { maxAge: options.olderThan }),
        ...(options.keep === undefined ? {} : { maxCount: options.keep }),
      });
      if (options.json) {
        console.log(JSON.stringify(answer, null, 2));
        return;
      }
      const verb = answer.dryRun ? 'would remove' : 'removed';
      for (const job of answer.removed) {
        const finished = job.finishedAt === null ? '' : `, finished ${new Date(job.finishedAt).toISOString()}`;
        console.log(`${verb}  ${job.id}  ${job.service}${job.name ? ` ${job.name}` : ''}  ${job.state}, ${job.total} items${finished}`);
      }
      const { maxAge, maxCount } = answer.retention;
      const rule = [maxAge === null ? null : `finished over ${formatDuration(maxAge)} ago`, maxCount === null ? null : `past the newest ${maxCount}`].filter(Boolean).join(' or ');
      console.log(`${answer.removed.length} finished jobs ${answer.dryRun ? 'to remove' : 'removed'} (${rule || 'no limit set'})`);
    });

  return jobs;
}

interface PruneAnswer {
  dryRun: boolean;
  retention: { maxAge: number | null; maxCount: number | null };
  removed: { id: string; service: string; name: string | null; state: string; finishedAt: number | null; total: number }[];
}

/** Follows the job's server-sent events; a progress bar on a terminal, a line every few seconds otherwise. */
async function watch(api: AdminClient, id: string): Promise<number> {
  const body = await api.stream(`/v1/jobs/${enc(id)}/stream`);
  const tty = process.stderr.isTTY === true;
  let last: JobView | undefined;
  let printedAt = 0;
  let buffer = '';
  body.setEncoding('utf8');
  for await (const chunk of body as AsyncIterable<string>) {
    buffer += chunk;
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = message
        .split('\n')
        .filter((line) => line.startsWith('data: '))
        .map((line) => line.slice(6))
        .join('\n');
      if (!data) continue;
      last = JSON.parse(data) as JobView;
      const ended = ['succeeded', 'failed', 'cancelled'].includes(last.state);
      if (tty) process.stderr.write(`\r${progressLine(last, process.stderr.columns ?? 100)}\u001b[K`);
      else if (ended || Date.now() - printedAt >= 5000) {
        printedAt = Date.now();
        process.stderr.write(`${progressLine(last, 100)}\n`);
      }
    }
  }
  if (tty) process.stderr.write('\n');
  if (!last) throw new UnderstudyError('NO_JOB', `no progress came for job ${id}`);
  if (!['succeeded', 'failed', 'cancelled'].includes(last.state)) {
    throw new UnderstudyError('NOT_RUNNING', `the connection to Understudy ended while job ${id} was ${last.state}; it goes on: \`understudy jobs watch ${id}\``);
  }
  console.log(`${last.id}: ${last.state}: ${last.succeeded} succeeded, ${last.failed} failed of ${last.total}; results: ${last.outputs.results}`);
  if (last.outputs.joined) console.log(`joined output: ${last.outputs.joined}`);
  return last.state === 'succeeded' ? 0 : 1;
}

/** The job to submit: the JSON file as it is (with flags applied), or items built from lines, sentences or files. */
function buildJob(file: string | undefined, options: SubmitOptions): Record<string, unknown> {
  const sources = [file, options.lines, options.sentences, options.files].filter((source) => source !== undefined);
  if (sources.length !== 1) {
    throw new UnderstudyError('BAD_ARGUMENTS', 'give exactly one of: a job file, --lines, --sentences or --files (see `understudy jobs submit --help`)');
  }
  let job: Record<string, unknown>;
  if (file !== undefined) {
    const text = file === '-' ? readFileSync(0, 'utf8') : readText(file);
    try {
      job = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new UnderstudyError('BAD_JSON', `${file} is not JSON: ${(error as Error).message}`);
    }
  } else {
    if (!options.service) throw new UnderstudyError('BAD_ARGUMENTS', '--service is required with --lines, --sentences or --files');
    if (!options.path) throw new UnderstudyError('BAD_ARGUMENTS', '--path is required with --lines, --sentences or --files (the model server\'s path, e.g. /v1/audio/speech)');
    let items: Record<string, unknown>[];
    if (options.files) {
      items = options.files.map((name) => ({ file: path.resolve(name) }));
    } else {
      const text = readText((options.lines ?? options.sentences)!);
      const pieces = options.lines ? text.split('\n') : [...new Intl.Segmenter('en', { granularity: 'sentence' }).segment(text)].map((s) => s.segment);
      const extra = Object.fromEntries(options.set.map(keyValue));
      items = pieces
        .map((piece) => piece.replace(/\s+/g, ' ').trim())
        .filter((piece) => piece !== '')
        .map((piece) => (options.field ? { json: { ...extra, [options.field]: piece } } : { text: piece }));
    }
    if (items.length === 0) throw new UnderstudyError('BAD_ARGUMENTS', 'no items: the input is empty');
    job = { service: options.service, defaults: { path: options.path }, items };
  }
  const defaults = { ...(job.defaults as Record<string, unknown> | undefined) };
  if (options.method) defaults.method = options.method.toUpperCase();
  if (options.header.length > 0) defaults.headers = { ...(defaults.headers as object | undefined), ...Object.fromEntries(options.header.map(header)) };
  if (file !== undefined && options.path) defaults.path = options.path;
  if (Object.keys(defaults).length > 0) job.defaults = defaults;
  if (file !== undefined && options.service) job.service = options.service;
  if (options.concurrency !== undefined) job.concurrency = options.concurrency;
  if (options.itemTimeout !== undefined) job.itemTimeout = options.itemTimeout;
  if (options.retries !== undefined) job.retries = options.retries;
  if (options.join !== undefined) job.join = options.join;
  if (options.name !== undefined) job.name = options.name;
  return job;
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new UnderstudyError('NO_FILE', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
}

function keyValue(pair: string): [string, unknown] {
  const at = pair.indexOf('=');
  if (at <= 0) throw new UnderstudyError('BAD_ARGUMENTS', `--set ${pair}: expected key=value`);
  const raw = pair.slice(at + 1);
  try {
    return [pair.slice(0, at), JSON.parse(raw) as unknown];
  } catch {
    return [pair.slice(0, at), raw];
  }
}

function header(line: string): [string, string] {
  const at = line.indexOf(':');
  if (at <= 0) throw new UnderstudyError('BAD_ARGUMENTS', `--header ${line}: expected "Name: value"`);
  return [line.slice(0, at).trim(), line.slice(at + 1).trim()];
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function positiveInt(value: string): number {
  if (!/^[1-9]\d*$/.test(value)) throw new InvalidArgumentError('expected a whole number above 0');
  return Number(value);
}

function wholeNumber(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

function enc(part: string): string {
  return encodeURIComponent(part);
}
