// Copied verbatim from the seeds: websocket-api-quick-reference.md, section "React Hook"
// (useWebSocket and its usage, Dashboard). Do not edit: tests/browser.rs puts this text
// unchanged in the page, where seeds-glue.js transpiles it with @babel/standalone (presets
// typescript + react) and renders <Dashboard/> with React 18, providing useState/useEffect.

function useWebSocket(url: string) {
  const [metrics, setMetrics] = useState(null);
  
  useEffect(() => {
    const ws = new WebSocket(url);
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === 'metrics') setMetrics(msg.data);
    };
    return () => ws.close();
  }, [url]);
  
  return metrics;
}

// Usage
function Dashboard() {
  const metrics = useWebSocket('ws://localhost:8080/api/monitoring/ws');
  return <div>Topics: {metrics?.clusterHealth.totalTopics}</div>;
}
