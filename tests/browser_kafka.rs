//! The dashboard against a real Kafka-compatible broker, in a real browser: tansu
//! (`common/tansu.rs`) holds a topic with records and a group with committed offsets, the hub
//! runs in-process watching it (`HubHandle::watch_kafka`), and headless Chromium
//! (`common/browser.rs`, shared with tests/browser.rs) renders the server's own dashboard.
//! The test reads the rendered page: the cluster line with the broker's address and `up`, the
//! topic with its message count, the group's lag in messages and in time, the latency canary's
//! figures; then the broker is
//! killed and the page shows the "source unavailable" banner over the last good figures, and
//! once it is back the banner goes.
//!
//! Needs chromium, `npm ci` in `tests/browser` and tansu (`TANSU`), looked for by build.rs;
//! without them the test is ignored, saying so, unless `CI` is set, where it runs and fails.
//! `.ci/run` installs them. Every wait polls the page's DOM with a deadline
//! (`Cdp::wait_until`); nothing sleeps in place of a state.

mod common;

use std::time::{Duration, Instant};

use common::browser::{dashboard_topic_row, prerequisites, start_browser, DASHBOARD_LIVE};
use common::tansu::Tansu;
use takhin_monitor::kafka_support::Client;
use takhin_monitor::KafkaConfig;

/// How often the hub polls the cluster (one `metrics` frame each).
const TICK: Duration = Duration::from_millis(300);
/// The topic on the broker and its records per partition.
const TOPIC: &str = "browser-kafka";
const RECORDS: [i64; 2] = [4, 3];
/// The group and its committed offset per partition: 3 behind on partition 0, none on 1.
const GROUP: &str = "browser-group";
const COMMITS: [i64; 2] = [1, 3];
/// The latency canary's topic (the hub creates it).
const CANARY: &str = "browser-canary";

/// The header's cluster line is shown, names the cluster by `bootstrap` and says `state`; the
/// banner shows exactly when the state is `down`.
fn source_line(bootstrap: &str, state: &str) -> String {
    format!(
        r#"(() => {{
    const item = document.getElementById('source-item');
    const banner = document.getElementById('source-banner');
    return !item.hidden && item.offsetParent !== null
        && document.getElementById('source-kind').textContent === 'Kafka cluster'
        && document.getElementById('source-cluster').textContent.startsWith('{bootstrap}')
        && document.getElementById('source-state').textContent === '{state}'
        && item.innerText.includes('{bootstrap}')
        && banner.hidden === ('{state}' !== 'down');
}})()"#
    )
}

/// The topic's row shows `partitions` partitions and `messages` messages.
fn topic_row(topic: &str, partitions: usize, messages: i64) -> String {
    format!(
        r#"(() => {{
    const row = document.querySelector('#topic-table [data-topic="{topic}"]');
    return row !== null && row.cells[0].textContent === '{topic}'
        && row.cells[1].textContent === '{partitions}'
        && row.cells[2].textContent === '{messages}';
}})()"#
    )
}

/// The group's row shows `lag` messages of lag and a lag in time (a duration, not `—`).
fn group_lag(group: &str, lag: i64) -> String {
    format!(
        r#"(() => {{
    const row = document.querySelector('#group-table [data-group="{group}"]');
    if (row === null) return false;
    const msgs = row.querySelector('.lag-msgs'), time = row.querySelector('.lag-time');
    return msgs !== null && msgs.textContent === '{lag} msgs'
        && time !== null && /^([0-9]+(\.[0-9])? s|[0-9]+[mhd] [0-9]+[smh])$/.test(time.textContent)
        && row.querySelector('.lagcell').innerText.includes('{lag} msgs · ' + time.textContent);
}})()"#
    )
}

/// The latency card shows the canary's figures: produce and fetch (end to end) p99 above 0 ms,
/// and a note naming the canary's topic.
const CANARY_LATENCY: &str = r#"(() => {
    const ms = (id) => Number(document.getElementById(id).dataset.value);
    const note = document.getElementById('latency-note');
    return ms('produce-p99') > 0 && ms('fetch-p99') >= ms('produce-p99')
        && document.getElementById('produce-p99').textContent !== '—'
        && !note.hidden && note.offsetParent !== null
        && note.textContent.startsWith('Canary on topic browser-canary: ')
        && /\(([0-9]+) round trips\)$/.test(note.textContent);
})()"#;

/// The "source unavailable" banner is shown, with the time and the error, and says the figures
/// are the last good poll's; the page is marked stale.
const SOURCE_DOWN_BANNER: &str = r#"(() => {
    const banner = document.getElementById('source-banner');
    return !banner.hidden && banner.offsetParent !== null
        && /^Source unavailable since .+ — .+/.test(
            document.getElementById('source-banner-text').textContent)
        && document.getElementById('source-banner-detail').textContent
            .includes("the last good poll's")
        && document.body.classList.contains('source-down');
})()"#;

#[test]
#[cfg_attr(
    not(any(all(has_browser, has_tansu), ci)),
    ignore = "needs chromium, tests/browser/node_modules and tansu (.ci/run installs them)"
)]
fn the_dashboard_shows_a_real_cluster_its_lag_in_time_and_its_outage() {
    common::watchdog();
    let chromium = prerequisites().unwrap_or_else(|why| panic!("{why}"));
    let started = Instant::now();
    let mut tansu = Tansu::start();
    let bootstrap = tansu.bootstrap();

    // The cluster: a topic with records, one per produce request (tansu's log end is wrong
    // after a request carrying several), and a group's commits.
    let mut admin = Client::new(
        vec![bootstrap.clone()],
        "takhin-browser-test",
        Duration::from_secs(5),
    )
    .expect("a valid bootstrap address");
    admin
        .create_topic(TOPIC, RECORDS.len() as i32, 1)
        .unwrap_or_else(|e| panic!("creating {TOPIC}: {e}"));
    for (partition, &n) in (0..).zip(&RECORDS) {
        for i in 0..n {
            let offset = admin
                .produce(TOPIC, partition, None, format!("record {i}").as_bytes())
                .unwrap_or_else(|e| panic!("producing to {TOPIC}/{partition}: {e}"));
            assert_eq!(offset, i, "offset of record {i} in {TOPIC}/{partition}");
        }
    }
    for (partition, &offset) in (0..).zip(&COMMITS) {
        admin
            .commit_offset(GROUP, TOPIC, partition, offset)
            .unwrap_or_else(|e| panic!("committing {GROUP} {TOPIC}/{partition}: {e}"));
    }
    let messages: i64 = RECORDS.iter().sum();
    let lag: i64 = RECORDS.iter().zip(&COMMITS).map(|(n, c)| n - c).sum();

    let hub = common::start(common::config());
    let kafka = KafkaConfig::new(vec![bootstrap.clone()])
        .request_timeout(Duration::from_secs(2))
        .canary_topic(CANARY);
    let _ticker = hub
        .watch_kafka(&kafka, TICK)
        .expect("the Kafka source starts");

    let mut browser = start_browser(&chromium);
    let cdp = &mut browser.cdp;
    let page = cdp.open(&format!("http://{}/", hub.local_addr()));
    cdp.wait_until(&page, "the dashboard to go live", DASHBOARD_LIVE);

    // Which cluster, and that it answers.
    cdp.wait_until(
        &page,
        "the cluster line to say up",
        &source_line(&bootstrap, "up"),
    );
    // The topic with its records, and the group's lag in messages and, from the second poll
    // of the partition that is behind, in time.
    cdp.wait_until(
        &page,
        "the topic's row with its message count",
        &topic_row(TOPIC, RECORDS.len(), messages),
    );
    cdp.wait_until(
        &page,
        "the group's lag in messages and in time",
        &group_lag(GROUP, lag),
    );

    // The canary's latency, and where it comes from.
    cdp.wait_until(&page, "the canary's latency", CANARY_LATENCY);

    // The broker goes away: the banner says since when and why, over the last good figures.
    tansu.stop();
    cdp.wait_until(
        &page,
        "the cluster line to say down",
        &source_line(&bootstrap, "down"),
    );
    cdp.wait_until(&page, "the source-unavailable banner", SOURCE_DOWN_BANNER);
    cdp.wait_until(
        &page,
        "the last good poll's topic row under the banner",
        &topic_row(TOPIC, RECORDS.len(), messages),
    );

    // It comes back (empty: tansu's storage is in memory): the banner goes, without a reload.
    tansu.restart();
    cdp.wait_until(
        &page,
        "the cluster line to say up again",
        &source_line(&bootstrap, "up"),
    );
    cdp.wait_until(
        &page,
        "the restarted broker's empty topic list",
        &format!("!({})", dashboard_topic_row(TOPIC)),
    );
    eprintln!("kafka browser test took {:?}", started.elapsed());
}
