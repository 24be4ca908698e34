// Copied verbatim from the seeds: websocket-api-quick-reference.md, section "JavaScript Client"
// (the TakhinWS class). Do not edit: tests/browser.rs loads this file unchanged to show the
// seed client works against takhin-monitor. The page's glue (seeds-glue.js) assigns the
// onMetrics/onTopicCreated/onTopicDeleted/onGroupUpdated callbacks on the instance.

class TakhinWS {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.ws.onmessage = (e) => this.handleMessage(JSON.parse(e.data));
    this.ws.onclose = () => this.reconnect();
  }

  handleMessage(msg) {
    switch(msg.type) {
      case 'metrics': this.onMetrics(msg.data); break;
      case 'topic_created': this.onTopicCreated(msg.data); break;
      case 'topic_deleted': this.onTopicDeleted(msg.data); break;
      case 'group_updated': this.onGroupUpdated(msg.data); break;
    }
  }

  send(type, data) {
    this.ws.send(JSON.stringify({type, data, timestamp: Date.now()/1000}));
  }

  reconnect() {
    setTimeout(() => new TakhinWS(this.url), 1000);
  }
}
