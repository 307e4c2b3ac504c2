// A Tunewire client in another language: Node.js with @grpc/grpc-js, built at run
// time from the .proto files in protos/ alone (no generated code, no other protos).
//
//   TUNEWIRE_API_KEY=tw-... node tests/clients/client.js HOST:PORT path/to/train.jsonl
//
// Uploads the file, creates a job on tiny-llama, streams its events and cancels it
// once it is queued, then reads it back and provokes two errors. Prints one JSON
// object a line; exits 1 on anything unexpected.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const CHUNK = 16 * 1024;

const [address, trainPath] = process.argv.slice(2);
const apiKey = process.env.TUNEWIRE_API_KEY;
if (!address || !trainPath || !apiKey) {
  console.error('usage: TUNEWIRE_API_KEY=... node client.js HOST:PORT FILE');
  process.exit(2);
}

const definition = protoLoader.loadSync(
  ['tunewire/v1/files.proto', 'tunewire/v1/jobs.proto', 'tunewire/v1/models.proto'],
  { includeDirs: [PROTOS], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).tunewire.v1;
const credentials = grpc.credentials.createInsecure();
const files = new v1.FileService(address, credentials);
const jobs = new v1.JobService(address, credentials);
const models = new v1.ModelService(address, credentials);

const metadata = new grpc.Metadata();
metadata.add('authorization', `Bearer ${apiKey}`);

function print(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function options(seconds = 30) {
  return { deadline: new Date(Date.now() + seconds * 1000) };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, options(), (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

function upload(file) {
  return new Promise((resolve, reject) => {
    const call = files.UploadFile(metadata, options(), (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
    call.write({ metadata: { filename: path.basename(file), purpose: 'PURPOSE_FINE_TUNE' } });
    const data = fs.readFileSync(file);
    for (let start = 0; start < data.length; start += CHUNK) {
      call.write({ chunk: data.subarray(start, start + CHUNK) });
    }
    call.end();
  });
}

// The state a TYPE_STATE event carries in its google.protobuf.Struct `data`.
function stateOf(event) {
  const value = event.data && event.data.fields && event.data.fields.state;
  return value ? value.stringValue : null;
}

// Streams every event of a job; cancels it once it is queued; resolves when the
// server ends the stream (the job is final and every event was sent).
function watchAndCancel(jobId) {
  return new Promise((resolve, reject) => {
    const call = jobs.StreamJobEvents({ job_id: jobId, after_sequence: 0 }, metadata, options(30));
    let cancelling = false;
    call.on('data', ({ event }) => {
      const state = stateOf(event);
      print({ step: 'event', sequence: Number(event.sequence), type: event.type, state, id: event.id });
      if (state === 'queued' && !cancelling) {
        cancelling = true;
        unary(jobs, 'CancelJob', { job_id: jobId })
          .then((job) => print({ step: 'cancel', state: job.state }))
          .catch(reject);
      }
    });
    call.on('error', reject);
    call.on('end', () => {
      print({ step: 'stream_end' });
      resolve();
    });
  });
}

async function expectError(rpc, client, request) {
  try {
    await unary(client, rpc, request);
  } catch (error) {
    const details = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
    print({
      step: 'error',
      rpc,
      code: error.code,
      name: grpc.status[error.code],
      details: error.details,
      status_details: details.length > 0 && details[0].length > 0,
    });
    return;
  }
  throw new Error(`${rpc} succeeded but should have failed`);
}

async function main() {
  const bases = await unary(models, 'ListBaseModels', {});
  print({ step: 'base_models', ids: bases.base_models.map((m) => m.id) });

  const file = await upload(trainPath);
  print({
    step: 'upload',
    id: file.id,
    state: file.state,
    bytes: Number(file.bytes),
    sha256: file.sha256,
    format: file.validation.format,
    example_count: Number(file.validation.example_count),
  });

  const job = await unary(jobs, 'CreateJob', {
    job: { base_model: 'tiny-llama', training_file: file.id, suffix: 'node', metadata: { client: 'node' } },
    request_id: `node-${file.id}`,
  });
  print({ step: 'job', id: job.id, state: job.state, base_model: job.base_model, training_file: job.training_file });

  await watchAndCancel(job.id);

  const final = await unary(jobs, 'GetJob', { job_id: job.id });
  print({ step: 'final', state: final.state });

  await expectError('GetJob', jobs, { job_id: 'ftjob-000000000000000000000000' });
  await expectError('CreateJob', jobs, { job: { base_model: 'no-such-model', training_file: file.id } });
}

main().then(
  () => {
    files.close();
    jobs.close();
    models.close();
  },
  (error) => {
    print({ step: 'fatal', code: error.code, message: String(error.message || error) });
    process.exit(1);
  },
);
