//! Direct attaches under paused time.

use std::sync::Arc;
use std::time::Duration;

use cloudha_attache::*;
use cloudha_protocol::*;
use tokio::time::{Instant, advance, sleep};

use crate::support::{FakeResource, FakeSink, startup_answer};

const H: HostId = HostId(7);
const SECOND: Duration = Duration::from_secs(1);

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn spawn(
    resource: Arc<FakeResource>,
    sink: Arc<FakeSink>,
    config: DirectConfig,
    tasks: &Tasks,
) -> AttacheHandle {
    DirectAttache::spawn(H, resource, sink, config, tasks)
}

#[tokio::test(start_paused = true)]
async fn pings_at_exactly_the_interval_with_consecutive_sequences() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let resource = Arc::new(FakeResource::new(H));
    let attache = spawn(resource, Arc::clone(&sink), DirectConfig::default(), &tasks);
    let start = Instant::now();
    sleep(Duration::from_secs(10)).await;
    assert!(
        sink.ping_times(H).is_empty(),
        "no ping task before the startup answer"
    );
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    let answered = Instant::now();
    sleep(Duration::from_secs(60 * 5 + 1)).await;
    let times = sink.ping_times(H);
    assert_eq!(times.len(), 5, "{times:?}");
    assert_eq!(
        times[0] - answered,
        Duration::from_secs(60),
        "first ping one interval after startup"
    );
    assert!(
        gaps(&times).iter().all(|g| *g == Duration::from_secs(60)),
        "{:?}",
        gaps(&times)
    );
    assert_eq!(
        sink.ping_seqs(H),
        vec![0, 1, 2, 3, 4],
        "attache-local ping sequence from 0"
    );
    assert!(times[0] - start > Duration::from_secs(60));
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn null_status_is_retried_count_times_every_timer_then_no_event() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.default_status = false;
    let resource = Arc::new(r);
    let config = DirectConfig {
        ping_retry_count: 3,
        ping_retry_timer: Duration::from_secs(5),
        ..Default::default()
    };
    let attache = spawn(Arc::clone(&resource), Arc::clone(&sink), config, &tasks);
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(60 + 30)).await;
    let calls = resource.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "one call and three retries: {calls:?}");
    assert!(
        gaps(&calls).iter().all(|g| *g == Duration::from_secs(5)),
        "{:?}",
        gaps(&calls)
    );
    assert!(
        sink.seen.lock().unwrap().is_empty(),
        "no event for a host that gave no status"
    );
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_delivers_the_ping() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let r = FakeResource::new(H);
    r.statuses.lock().unwrap().extend([None, None, Some(())]);
    let resource = Arc::new(r);
    let config = DirectConfig {
        ping_retry_count: 2,
        ping_retry_timer: Duration::from_secs(5),
        ..Default::default()
    };
    let attache = spawn(Arc::clone(&resource), Arc::clone(&sink), config, &tasks);
    let t0 = Instant::now();
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(60 + 11)).await;
    assert_eq!(sink.ping_times(H), vec![t0 + Duration::from_secs(70)]);
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn repeated_startups_keep_exactly_one_ping_task() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let resource = Arc::new(FakeResource::new(H));
    let attache = spawn(resource, Arc::clone(&sink), DirectConfig::default(), &tasks);
    for _ in 0..5 {
        attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
        advance(Duration::from_secs(7)).await;
    }
    let last = Instant::now() - Duration::from_secs(7);
    assert_eq!(tasks.len(), 1, "old ping tasks ended");
    sleep(Duration::from_secs(600)).await;
    let times = sink.ping_times(H);
    assert_eq!(
        times.len(),
        10,
        "one ping per interval, not five: {times:?}"
    );
    assert_eq!(
        times[0],
        last + Duration::from_secs(60),
        "the newest task's grid"
    );
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_resource_never_piles_up_ping_calls() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.hang_status = true;
    let resource = Arc::new(r);
    // No status timeout: the call hangs for good, and still ticks do not stack calls.
    let config = DirectConfig {
        status_timeout: Some(Duration::from_secs(3600 * 24)),
        ..Default::default()
    };
    let attache = spawn(Arc::clone(&resource), Arc::clone(&sink), config, &tasks);
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(60 * 30)).await;
    assert_eq!(
        resource.in_flight.lock().unwrap().1,
        1,
        "at most one call outstanding"
    );
    assert_eq!(resource.calls.lock().unwrap().len(), 1);
    // Released, the call completes; the missed ticks are skipped, not replayed in a burst.
    resource.release.notify_one();
    sleep(Duration::from_secs(1)).await;
    let after = sink.ping_times(H).len();
    sleep(Duration::from_secs(60)).await;
    assert!(sink.ping_times(H).len() - after <= 1);
    assert_eq!(resource.in_flight.lock().unwrap().1, 1);
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_status_call_is_bounded_by_the_interval() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.hang_status = true;
    let resource = Arc::new(r);
    let attache = spawn(
        Arc::clone(&resource),
        Arc::clone(&sink),
        DirectConfig::default(),
        &tasks,
    );
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(60 * 10 + 1)).await;
    let calls = resource.calls.lock().unwrap().clone();
    assert!(
        calls.len() >= 4,
        "each hung call times out and the next tick tries again: {calls:?}"
    );
    assert_eq!(resource.in_flight.lock().unwrap().1, 1, "never two at once");
    assert!(sink.ping_times(H).is_empty());
    attache.disconnect();
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn disconnect_cancels_pings_fails_pending_requests_and_releases_the_resource() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.execute_delay = Duration::from_secs(600);
    let resource = Arc::new(r);
    let attache = spawn(
        Arc::clone(&resource),
        Arc::clone(&sink),
        DirectConfig::default(),
        &tasks,
    );
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(61)).await;
    assert_eq!(sink.ping_times(H).len(), 1);
    let pending = {
        let a = attache.clone();
        tokio::spawn(async move { a.send(Request::one(ReadyCommand { host_id: H })).await })
    };
    sleep(SECOND).await;
    let at = Instant::now();
    attache.disconnect();
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(err, RequestError::Disconnected { host: H, .. }),
        "{err}"
    );
    assert_eq!(Instant::now(), at, "the waiter failed at once");
    assert!(attache.is_closed());
    attache.disconnect(); // idempotent
    assert_eq!(*resource.disconnected.lock().unwrap(), 1);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(sink.ping_times(H).len(), 1, "no ping after disconnect");
    let err = attache
        .send(Request::one(CheckHealthCommand {}))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Disconnected { .. }));
    tasks.shutdown().await;
    assert!(tasks.is_empty());
}

#[tokio::test(start_paused = true)]
async fn requests_time_out_after_their_wait() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.execute_delay = Duration::from_secs(100);
    let attache = spawn(Arc::new(r), sink, DirectConfig::default(), &tasks);
    let t0 = Instant::now();
    // CheckHealth has CloudStack's fixed 50 s wait.
    let err = send_one(&attache, CheckHealthCommand {}.into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Timeout { wait, .. } if wait == Duration::from_secs(50)),
        "{err}"
    );
    assert_eq!(Instant::now() - t0, Duration::from_secs(50));
    let err = attache
        .send(Request::one(ReadyCommand { host_id: H }).with_wait(Duration::from_secs(10)))
        .await;
    assert!(matches!(err, Err(RequestError::Timeout { .. })));
    assert_eq!(Instant::now() - t0, Duration::from_secs(60));
    // A command without a fixed wait gets the configured default.
    let r2 = {
        let mut r = FakeResource::new(H);
        r.execute_delay = Duration::from_secs(100);
        Arc::new(r)
    };
    let (sink2, _rx2) = FakeSink::new(Duration::ZERO);
    let a2 = DirectAttache::spawn(
        HostId(8),
        r2,
        sink2,
        DirectConfig {
            default_wait: Duration::from_secs(20),
            ..Default::default()
        },
        &tasks,
    );
    let t1 = Instant::now();
    assert!(matches!(
        a2.send(Request::one(ReadyCommand { host_id: H })).await,
        Err(RequestError::Timeout { .. })
    ));
    assert_eq!(Instant::now() - t1, Duration::from_secs(20));
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sequential_requests_run_one_at_a_time_in_order() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let mut r = FakeResource::new(H);
    r.execute_delay = Duration::from_secs(10);
    let resource = Arc::new(r);
    let attache = spawn(Arc::clone(&resource), sink, DirectConfig::default(), &tasks);
    let mut handles = Vec::new();
    for i in 0..4u64 {
        let a = attache.clone();
        handles.push(tokio::spawn(async move {
            a.send(Request::one(CheckVirtualMachineCommand { vm: VmId(i) }).sequential())
                .await
        }));
        tokio::task::yield_now().await;
    }
    for h in handles {
        let answers = h.await.unwrap().unwrap();
        assert!(matches!(answers[0], Answer::CheckVirtualMachine(_)));
    }
    let executed = resource.executed.lock().unwrap().clone();
    let vms: Vec<_> = executed
        .iter()
        .map(|(_, c)| match c {
            Command::CheckVirtualMachine(c) => c.vm.0,
            _ => 99,
        })
        .collect();
    assert_eq!(vms, vec![0, 1, 2, 3], "in the order sent");
    let times: Vec<_> = executed.iter().map(|(t, _)| *t).collect();
    assert!(
        gaps(&times).iter().all(|g| *g == Duration::from_secs(10)),
        "one in flight: {:?}",
        gaps(&times)
    );
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batch_stops_on_error_when_asked() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::ZERO);
    let attache = spawn(
        Arc::new(FakeResource::new(H)),
        sink,
        DirectConfig::default(),
        &tasks,
    );
    let cmds = vec![
        Command::CheckHealth(CheckHealthCommand {}),
        Command::StopVm(StopVmCommand {
            vm: VmId(1),
            force: false,
        }),
        Command::CheckHealth(CheckHealthCommand {}),
    ];
    let all = attache.send(Request::new(cmds.clone())).await.unwrap();
    assert_eq!(all.len(), 3);
    let mut req = Request::new(cmds);
    req.stop_on_error = true;
    let stopped = attache.send(req).await.unwrap();
    assert_eq!(stopped.len(), 2);
    assert!(!stopped[1].success());
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn mock_resource_null_status_produces_no_sink_call() {
    // The same rule with mockall ports: the sink must never be called.
    let tasks = Tasks::new();
    let mut resource = MockServerResource::new();
    resource
        .expect_get_current_status()
        .times(3)
        .returning(|_| None);
    resource.expect_disconnected().times(1).return_const(());
    let mut sink = MockCommandSink::new();
    sink.expect_on_commands().times(0);
    let attache = DirectAttache::spawn(
        H,
        Arc::new(resource),
        Arc::new(sink),
        DirectConfig::default(),
        &tasks,
    );
    attache.on_startup_answer(&startup_answer(H, Duration::from_secs(60)));
    sleep(Duration::from_secs(60 * 3 + 1)).await;
    attache.disconnect();
    tasks.shutdown().await;
}
