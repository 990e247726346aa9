'use strict';
// Route one request through the mabrouter sidecar from Node.js, then report its outcome.
//
//   node route.js [ADDRESS] [EXPERIMENT] [UNIT_ID]
//
// Arguments fall back to MABROUTER_ADDRESS (127.0.0.1:50051), MABROUTER_EXPERIMENT (ranker) and
// MABROUTER_UNIT_ID (a random user id). Other settings: MABROUTER_DEFAULT_ARM (ranker-v1),
// MABROUTER_REWARD (1; "none" skips the report), MABROUTER_ATTRIBUTES (a JSON object of strings,
// numbers, booleans and string lists), MABROUTER_ROUTE_DEADLINE_MS (50).
//
// Prints one JSON object per line: {"event":"route",...} then {"event":"outcome",...}.
// Routing fails open like the Python client: any error serves the default arm (fallback: true).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const CONNECT_TIMEOUT_MS = 1000;
const OUTCOME_DEADLINE_MS = 2000;

// includeDirs makes `mabrouter/v1/router.proto` resolve like protoc's -I. The one import,
// google/protobuf/struct.proto, needs no include path: protobufjs (under proto-loader) bundles
// the well-known types. keepCase keeps the proto's snake_case field names (decision_id...), but
// the bundled Struct/Value types use camelCase (stringValue, listValue...).
const definition = protoLoader.loadSync('mabrouter/v1/router.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String, // config_version is an int64
  enums: String, // reason as its name, e.g. "SAMPLED"
  defaults: true,
  oneofs: true,
});
const { Router } = grpc.loadPackageDefinition(definition).mabrouter.v1;

const CHANNEL_OPTIONS = {
  'grpc.enable_retries': 0, // a 50 ms deadline leaves no room for retries: fall back instead
  'grpc.keepalive_time_ms': 300000, // servers with default settings refuse more frequent pings
  'grpc.keepalive_timeout_ms': 10000,
  'grpc.initial_reconnect_backoff_ms': 100, // find a restarted sidecar within a second
  'grpc.max_reconnect_backoff_ms': 1000,
};

function toValue(value) {
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value) && value.every((item) => typeof item === 'string')) {
    return { listValue: { values: value.map((item) => ({ stringValue: item })) } };
  }
  throw new TypeError(`unsupported attribute value ${JSON.stringify(value)}: use strings, numbers, booleans or string lists`);
}

function toStruct(attributes) {
  const fields = {};
  for (const [key, value] of Object.entries(attributes)) fields[key] = toValue(value);
  return { fields };
}

function deadline(ms) {
  return new Date(Date.now() + ms);
}

function describe(error) {
  const code = error.code !== undefined ? grpc.status[error.code] : 'UNKNOWN';
  return `${code}: ${error.details || error.message}`;
}

function waitForReady(client) {
  // Connect once up front (a service does this at start-up) so the first route is not spent connecting.
  return new Promise((resolve) => client.waitForReady(deadline(CONNECT_TIMEOUT_MS), (error) => resolve(!error)));
}

function route(client, request, deadlineMs) {
  return new Promise((resolve) => {
    client.Route(request, { deadline: deadline(deadlineMs) }, (error, response) => {
      if (error) {
        resolve({
          arm: request.default_arm, decision_id: '', reason: 'CLIENT_FALLBACK', propensity: 1,
          config_version: '0', payload: {}, fallback: true, error: describe(error),
        });
        return;
      }
      resolve({ ...response, fallback: response.reason === 'FALLBACK_DEFAULT', error: null });
    });
  });
}

function reportOutcome(client, decisionId, reward) {
  return new Promise((resolve, reject) => {
    client.ReportOutcome({ decision_id: decisionId, reward }, { deadline: deadline(OUTCOME_DEADLINE_MS) },
      (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function main() {
  const [address, experiment, unitId] = [
    process.argv[2] || process.env.MABROUTER_ADDRESS || '127.0.0.1:50051',
    process.argv[3] || process.env.MABROUTER_EXPERIMENT || 'ranker',
    process.argv[4] || process.env.MABROUTER_UNIT_ID || `user-${Math.floor(Math.random() * 1e9)}`,
  ];
  const defaultArm = process.env.MABROUTER_DEFAULT_ARM || 'ranker-v1';
  const rewardText = process.env.MABROUTER_REWARD || '1';
  const deadlineMs = Number(process.env.MABROUTER_ROUTE_DEADLINE_MS || 50);
  const attributes = JSON.parse(process.env.MABROUTER_ATTRIBUTES || '{}');

  const client = new Router(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  try {
    await waitForReady(client);
    const started = process.hrtime.bigint();
    const assignment = await route(client, {
      experiment, unit_id: unitId, default_arm: defaultArm, attributes: toStruct(attributes),
    }, deadlineMs);
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(JSON.stringify({ event: 'route', experiment, unit_id: unitId, ...assignment, elapsed_ms: elapsedMs }));

    if (!assignment.decision_id || rewardText === 'none') return 0; // a fallback has nothing to report
    const reward = Number(rewardText);
    try {
      const outcome = await reportOutcome(client, assignment.decision_id, reward);
      console.log(JSON.stringify({ event: 'outcome', decision_id: assignment.decision_id, reward, ...outcome }));
      return 0;
    } catch (error) {
      // A real service would buffer and retry (the router counts a decision id once); see README.md.
      console.log(JSON.stringify({ event: 'outcome_error', decision_id: assignment.decision_id, error: describe(error) }));
      return 1;
    }
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; }, (error) => {
  console.error(error);
  process.exitCode = 2;
});
