// Kasagi fan-out load for k6 users (JSON subprotocol, kasagi.v1.json).
//
// Each VU is one client: it joins room `k6-<n>` (ROOM_SIZE VUs per room), then sends one
// `op` every 1/HZ s: ["set", ["<vu>.<slot>"], {"ts": <µs>, "s": <vu>, "q": <seq>, "pad": "..."}].
// Every member (the sender included) times each op it receives: `delivery_latency` is
// now - ts. Checks: ticks consecutive per client (`tick_gaps`), acks in seq order
// (`ack_mismatch`), errors by code (`server_errors`).
//
// k6's clock is milliseconds, so latencies below 1 ms are coarse here; kasagi-bench
// (`scripts/bench.sh`) measures in µs, open loop, with CPU accounting.
//
//   k6 run -e URL=ws://127.0.0.1:7700/ws -e VUS=200 -e ROOM_SIZE=10 -e HZ=10 -e DURATION=30s bench/k6/fanout.js
//
// The server's default rate limit (200 msg/s per connection) is plenty at HZ <= 100.

import ws from 'k6/ws';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const URL = __ENV.URL || 'ws://127.0.0.1:7700/ws';
const VUS = parseInt(__ENV.VUS || '100', 10);
const ROOM_SIZE = parseInt(__ENV.ROOM_SIZE || '10', 10);
const HZ = parseFloat(__ENV.HZ || '10');
const DURATION = __ENV.DURATION || '30s';
const PAD = 'x'.repeat(parseInt(__ENV.PAD_BYTES || '40', 10));
const SLOTS = 8;
// DURATION in seconds (`30s`): each client closes itself then, so k6 ends cleanly.
const SECONDS = parseFloat(DURATION);

export const options = {
  scenarios: {
    fanout: { executor: 'constant-vus', vus: VUS, duration: `${SECONDS + 5}s`, gracefulStop: '5s' },
  },
  thresholds: {
    tick_gaps: ['count==0'],
    ack_mismatch: ['count==0'],
  },
};

const deliveryLatency = new Trend('delivery_latency', true);
const ackLatency = new Trend('ack_latency', true);
const deliveries = new Counter('deliveries');
const tickGaps = new Counter('tick_gaps');
const ackMismatch = new Counter('ack_mismatch');
const serverErrors = new Counter('server_errors');

function nowMicros() {
  return Date.now() * 1000;
}

export default function () {
  const vu = __VU;
  const room = `k6-${Math.floor((vu - 1) / ROOM_SIZE)}`;
  const params = { headers: { 'Sec-WebSocket-Protocol': 'kasagi.v1.json' } };
  const res = ws.connect(URL, params, (socket) => {
    let lastTick = null;
    let seq = 0;
    const pending = [];
    socket.on('open', () => {
      socket.send(JSON.stringify({ t: 'join', room }));
      socket.setTimeout(() => socket.close(), SECONDS * 1000);
    });
    socket.on('message', (text) => {
      const m = JSON.parse(text);
      switch (m.t) {
        case 'joined':
          lastTick = m.tick;
          if (!m.resync) {
            socket.setInterval(() => {
              seq += 1;
              const ts = nowMicros();
              pending.push([seq, ts]);
              const key = `${vu}.${seq % SLOTS}`;
              socket.send(JSON.stringify({
                t: 'op', room, seq,
                ops: [['set', [key], { ts, s: vu, q: seq, pad: PAD }]],
              }));
            }, 1000 / HZ);
          }
          break;
        case 'delta': {
          if (lastTick !== null && m.tick !== lastTick + 1) tickGaps.add(1);
          lastTick = m.tick;
          const now = nowMicros();
          for (const op of m.ops) {
            const v = op[2];
            if (v && typeof v === 'object' && typeof v.ts === 'number') {
              deliveryLatency.add((now - v.ts) / 1000);
              deliveries.add(1);
            }
          }
          break;
        }
        case 'ack': {
          const front = pending.shift();
          if (!front || front[0] !== m.seq) ackMismatch.add(1);
          else ackLatency.add((nowMicros() - front[1]) / 1000);
          break;
        }
        case 'error':
          serverErrors.add(1, { code: m.code });
          break;
        default:
          break;
      }
    });
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}
