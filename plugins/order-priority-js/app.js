// order-priority, in JavaScript: the same connector as plugins/order-priority (Rust).
// Adds "priority" (high when data.total >= config threshold, default 100) to the
// event data and as an extension; drops cancelled orders; data without a
// numeric total fails permanently. With `tiers_url` set, the customer's tier
// is fetched (GET {tiers_url}/{customer}) with the standard `fetch`, which the
// host routes through its egress policy: gold customers are always high.
// Built by componentize-js (tests/build.rs).
import { get } from 'weft:connector/config@0.2.0';
import { log } from 'weft:connector/log@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function permanent(reason) {
  return { tag: 'permanent', val: reason };
}

function retryable(reason) {
  return { tag: 'retryable', val: reason };
}

// Asks the tier service for the customer's tier; undefined when it has none.
async function lookupTier(base, customer) {
  if (typeof customer !== 'string') {
    return undefined;
  }
  if (!/^[A-Za-z0-9_-]+$/.test(customer)) {
    throw permanent('customer is not a plain id');
  }
  let response;
  try {
    response = await fetch(`${base.replace(/\/+$/, '')}/${customer}`);
  } catch (e) {
    throw retryable('tier service unreachable');
  }
  const status = response.status;
  if (status === 200) {
    let body;
    try {
      body = JSON.parse(await response.text());
    } catch (e) {
      body = null;
    }
    if (body === null || typeof body !== 'object' || typeof body.tier !== 'string') {
      throw permanent('tier service sent no tier');
    }
    return body.tier;
  }
  if (status === 404) {
    return undefined;
  }
  if (status === 408 || status === 429 || (status >= 500 && status <= 599)) {
    throw retryable(`tier service answered ${status}`);
  }
  throw permanent(`tier service answered ${status}`);
}

export async function transform(event) {
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
  const tiersUrl = get('tiers_url');
  const tier = tiersUrl == null ? undefined : await lookupTier(tiersUrl, data.customer);
  if (tier !== undefined) {
    data.tier = tier;
  }
  data.priority = tier === 'gold' || data.total >= threshold ? 'high' : 'normal';
  log('debug', `priority ${data.priority}`, [['event', event.id]]);
  return [{
    ...event,
    data: encoder.encode(JSON.stringify(data)),
    datacontenttype: 'application/json',
    extensions: [...event.extensions.filter(([k]) => k !== 'priority'), ['priority', data.priority]],
  }];
}
