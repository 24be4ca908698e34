// Glue of the seeds page (tests/browser.rs writes the page): runs the seeds' code unchanged
// against the server named by the page's `?ws=` parameter and records what it sees in
// `window.seen`, which the test polls over the DevTools protocol.
//
// Loaded after React, ReactDOM, Babel (standalone) and seeds-client.js, with the seeds' hook
// source in <script type="text/x-tsx" id="seeds-hook">.
'use strict';

window.seen = {
  metrics: 0,
  lastMetrics: null,
  topicCreated: [],
  topicDeleted: [],
  groupUpdated: [],
  hookRendered: false,
  errors: [],
};

window.addEventListener('error', (e) => {
  window.seen.errors.push(String(e.message || e.error || e));
});
window.addEventListener('unhandledrejection', (e) => {
  window.seen.errors.push('unhandled rejection: ' + String(e.reason));
});

const target = new URLSearchParams(location.search).get('ws');
if (!target) {
  throw new Error('the page needs ?ws=ws://HOST:PORT/api/monitoring/ws');
}

// The seeds' Dashboard hard-codes the quick reference's example address; point that one
// address at the server under test so the seed runs unchanged.
const SEEDS_URL = 'ws://localhost:8080/api/monitoring/ws';
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    super(url === SEEDS_URL ? target : url, protocols);
  }
};

// 1. The seeds' JavaScript client: construct it, then assign the callbacks it calls.
/* global TakhinWS */
const client = new TakhinWS(target);
client.onMetrics = (data) => {
  window.seen.metrics += 1;
  window.seen.lastMetrics = data;
};
client.onTopicCreated = (data) => window.seen.topicCreated.push(data);
client.onTopicDeleted = (data) => window.seen.topicDeleted.push(data);
client.onGroupUpdated = (data) => window.seen.groupUpdated.push(data);
window.takhinClient = client;

// 2. The seeds' React hook and its Dashboard: transpile the TSX in the page, provide the
// hooks it uses as bare names, render <Dashboard/>.
/* global React, ReactDOM, Babel */
const source = document.getElementById('seeds-hook').textContent;
const { code } = Babel.transform(source, {
  filename: 'seeds-hook.tsx',
  presets: ['react', ['typescript', { isTSX: true, allExtensions: true }]],
});
const Dashboard = new Function(
  'React',
  'const { useState, useEffect } = React;\n' + code + '\nreturn Dashboard;',
)(React);
ReactDOM.createRoot(document.getElementById('root')).render(React.createElement(Dashboard));
window.seen.hookRendered = true;
