// order-priority, in JavaScript: the same connector as plugins/order-priority (Rust).
// Adds "priority" (high when data.total >= config threshold, default 100) to the
// event data and as an extension; drops cancelled orders; data without a
// numeric total fails permanently. Built by componentize-js (tests/build.rs).
import { get } from 'weft:connector/config@0.1.0';
import { log } from 'weft:connector/log@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function permanent(reason) {
  return { tag: 'permanent', val: reason };
}

export function transform(event) {
  let data;
  try {
    data = JSON.parse(decoder.decode(event.data));
  } catch (e) {
    throw permanent('data is not JSON');
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw permanent('data is not a JSON object');
  }
  if (data.status === 'cancelled') {
    return [];
  }
  if (typeof data.total !== 'number') {
    throw permanent('data has no numeric "total"');
  }
  const threshold = Number(get('threshold') ?? '100');
  data.priority = data.total >= threshold ? 'high' : 'normal';
  log('debug', `priority ${data.priority}`, [['event', event.id]]);
  return [{
    ...event,
    data: encoder.encode(JSON.stringify(data)),
    datacontenttype: 'application/json',
    extensions: [...event.extensions.filter(([k]) => k !== 'priority'), ['priority', data.priority]],
  }];
}
