//! The registry through its public API: order, dispatch rules, re-entrancy, isolation, timeouts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cloudha_protocol::*;
use cloudha_registry::*;

type Log = Arc<Mutex<Vec<String>>>;

/// Records every call as "name:callback".
struct Recorder {
    name: &'static str,
    log: Log,
    control: Option<&'static str>,
    refuse: Option<ConnectError>,
    timeout: Option<Duration>,
    recurring: bool,
}

impl Recorder {
    fn new(name: &'static str, log: &Log) -> Self {
        Self {
            name,
            log: Arc::clone(log),
            control: None,
            refuse: None,
            timeout: None,
            recurring: false,
        }
    }
    fn push(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{what}", self.name));
    }
}

#[async_trait::async_trait]
impl Listener for Recorder {
    fn process_answers(&self, _: HostId, seq: Sequence, _: &[Answer]) -> bool {
        self.push(&format!("answers{}", seq.0));
        true
    }
    fn process_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> bool {
        self.push("commands");
        true
    }
    fn process_control_command(&self, _: HostId, _: &AgentControlCommand) -> Option<Answer> {
        self.push("control");
        self.control.map(|d| {
            Answer::Generic(GenericAnswer {
                success: true,
                details: d.into(),
            })
        })
    }
    async fn process_connect(
        &self,
        _: HostId,
        _: &StartupCommand,
        _: bool,
    ) -> Result<(), ConnectError> {
        self.push("connect");
        self.refuse.clone().map_or(Ok(()), Err)
    }
    fn process_disconnect(&self, _: HostId, status: Status) -> bool {
        self.push(&format!("disconnect:{status}"));
        true
    }
    fn process_host_added(&self, _: HostId) {
        self.push("added");
    }
    fn process_host_about_to_be_removed(&self, _: HostId) {
        self.push("about_to_be_removed");
    }
    fn process_host_removed(&self, _: HostId, _: Option<ClusterId>) {
        self.push("removed");
    }
    fn process_timeout(&self, _: HostId, seq: Sequence) -> bool {
        self.push(&format!("timeout{}", seq.0));
        true
    }
    fn is_recurring(&self) -> bool {
        self.recurring
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

const H: HostId = HostId(1);

fn ping() -> Vec<Command> {
    vec![PingCommand { host_id: H }.into()]
}

#[test]
fn priority_listeners_first_then_registration_order_and_every_command_listener_runs() {
    let log = Log::default();
    let r = Registry::default();
    r.register(Arc::new(Recorder::new("a", &log)), Interest::ALL, false);
    r.register(Arc::new(Recorder::new("p1", &log)), Interest::ALL, true);
    r.register(
        Arc::new(Recorder::new("b", &log)),
        Interest::COMMANDS,
        false,
    );
    r.register(
        Arc::new(Recorder::new("p2", &log)),
        Interest::COMMANDS,
        true,
    );
    r.register(
        Arc::new(Recorder::new("conn", &log)),
        Interest::CONNECTIONS,
        false,
    );
    r.dispatch_commands(H, Sequence(0), &ping());
    assert_eq!(
        take(&log),
        ["p1:commands", "p2:commands", "a:commands", "b:commands"]
    );
    r.dispatch_disconnect(H, Status::Alert);
    assert_eq!(
        take(&log),
        [
            "p1:disconnect:Alert",
            "a:disconnect:Alert",
            "conn:disconnect:Alert"
        ]
    );
    r.dispatch_host_added(H);
    r.dispatch_host_about_to_be_removed(H);
    r.dispatch_host_removed(H, None);
    assert_eq!(
        take(&log),
        [
            "p1:added",
            "a:added",
            "conn:added",
            "p1:about_to_be_removed",
            "a:about_to_be_removed",
            "conn:about_to_be_removed",
            "p1:removed",
            "a:removed",
            "conn:removed"
        ]
    );
    r.dispatch_answers(H, Sequence(4), &[Answer::ok()]);
    assert_eq!(
        take(&log),
        ["p1:answers4", "p2:answers4", "a:answers4", "b:answers4"]
    );
}

#[test]
fn first_non_null_control_answer_wins() {
    let log = Log::default();
    let r = Registry::default();
    r.register(
        Arc::new(Recorder::new("none", &log)),
        Interest::COMMANDS,
        false,
    );
    r.register(
        Arc::new(Recorder {
            control: Some("first"),
            ..Recorder::new("first", &log)
        }),
        Interest::COMMANDS,
        false,
    );
    r.register(
        Arc::new(Recorder {
            control: Some("second"),
            ..Recorder::new("second", &log)
        }),
        Interest::COMMANDS,
        false,
    );
    let answer = r
        .dispatch_control(H, &AgentControlCommand::default())
        .unwrap();
    assert!(
        matches!(answer, Answer::Generic(GenericAnswer { ref details, .. }) if details == "first")
    );
    assert_eq!(
        take(&log),
        ["none:control", "first:control"],
        "later listeners are not asked"
    );
    let empty = Registry::default();
    assert!(
        empty
            .dispatch_control(H, &AgentControlCommand::default())
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn connect_stops_at_the_first_refusal_and_says_what_to_do() {
    for (refusal, error) in [
        (
            Refusal::Disconnect,
            ConnectError::disconnect("bad host setup"),
        ),
        (
            Refusal::Shutdown,
            ConnectError::shutdown("agent version changed"),
        ),
    ] {
        let log = Log::default();
        let r = Registry::default();
        r.register(
            Arc::new(Recorder::new("ok", &log)),
            Interest::CONNECTIONS,
            false,
        );
        let refuser = r.register(
            Arc::new(Recorder {
                refuse: Some(error.clone()),
                ..Recorder::new("refuser", &log)
            }),
            Interest::CONNECTIONS,
            false,
        );
        r.register(
            Arc::new(Recorder::new("after", &log)),
            Interest::CONNECTIONS,
            false,
        );
        r.register(
            Arc::new(Recorder::new("commands_only", &log)),
            Interest::COMMANDS,
            false,
        );
        let err = r
            .dispatch_connect(H, &StartupCommand::default(), false)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ConnectRefused {
                host: H,
                listener: refuser,
                error
            }
        );
        assert_eq!(err.error.refusal, refusal);
        assert_eq!(take(&log), ["ok:connect", "refuser:connect"]);
    }
    let log = Log::default();
    let r = Registry::default();
    r.register(
        Arc::new(Recorder::new("a", &log)),
        Interest::CONNECTIONS,
        false,
    );
    r.register(Arc::new(Recorder::new("b", &log)), Interest::ALL, false);
    assert_eq!(
        r.dispatch_connect(H, &StartupCommand::default(), false)
            .await,
        Ok(())
    );
    assert_eq!(take(&log), ["a:connect", "b:connect"]);
}

#[test]
fn unregister_removes_by_id_from_every_list() {
    let log = Log::default();
    let r = Registry::default();
    let a = r.register(Arc::new(Recorder::new("a", &log)), Interest::ALL, false);
    r.register(Arc::new(Recorder::new("b", &log)), Interest::ALL, false);
    assert!(r.unregister(a));
    assert!(!r.unregister(a), "once");
    r.dispatch_commands(H, Sequence(0), &ping());
    r.dispatch_disconnect(H, Status::Down);
    assert_eq!(take(&log), ["b:commands", "b:disconnect:Down"]);
}

/// A listener that, on its first command, unregisters a victim and registers a newcomer.
struct Meddler {
    registry: Weak<Registry>,
    victim: Mutex<Option<ListenerId>>,
    log: Log,
}

impl Listener for Meddler {
    fn process_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> bool {
        self.log.lock().unwrap().push("meddler:commands".into());
        let registry = self.registry.upgrade().unwrap();
        if let Some(victim) = self.victim.lock().unwrap().take() {
            assert!(registry.unregister(victim));
            registry.register(
                Arc::new(Recorder::new("newcomer", &self.log)),
                Interest::COMMANDS,
                false,
            );
        }
        false
    }
}

#[test]
fn a_listener_may_register_and_unregister_during_dispatch() {
    let log = Log::default();
    let r = Arc::new(Registry::default());
    let meddler = Arc::new(Meddler {
        registry: Arc::downgrade(&r),
        victim: Mutex::new(None),
        log: Arc::clone(&log),
    });
    r.register(meddler.clone(), Interest::COMMANDS, true);
    let victim = r.register(
        Arc::new(Recorder::new("victim", &log)),
        Interest::COMMANDS,
        false,
    );
    *meddler.victim.lock().unwrap() = Some(victim);
    // No deadlock; the victim, unregistered before its turn in this very dispatch, is not called;
    // the newcomer joins from the next dispatch on.
    r.dispatch_commands(H, Sequence(0), &ping());
    assert_eq!(take(&log), ["meddler:commands"]);
    r.dispatch_commands(H, Sequence(1), &ping());
    assert_eq!(take(&log), ["meddler:commands", "newcomer:commands"]);
}

struct Panicker;
impl Listener for Panicker {
    fn process_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> bool {
        panic!("listener bug");
    }
    fn process_control_command(&self, _: HostId, _: &AgentControlCommand) -> Option<Answer> {
        panic!("listener bug");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_is_isolated_and_counted() {
    let log = Log::default();
    let r = Registry::default();
    r.register(
        Arc::new(Recorder::new("before", &log)),
        Interest::COMMANDS,
        false,
    );
    let bad = r.register(Arc::new(Panicker), Interest::COMMANDS, false);
    r.register(
        Arc::new(Recorder {
            control: Some("x"),
            ..Recorder::new("after", &log)
        }),
        Interest::COMMANDS,
        false,
    );
    r.dispatch_commands(H, Sequence(0), &ping());
    r.dispatch_commands(H, Sequence(1), &ping());
    assert_eq!(
        take(&log),
        [
            "before:commands",
            "after:commands",
            "before:commands",
            "after:commands"
        ]
    );
    assert!(
        r.dispatch_control(H, &AgentControlCommand::default())
            .is_some(),
        "the next listener answers"
    );
    assert_eq!(take(&log), ["before:control", "after:control"]);
    assert_eq!(
        r.stats(bad),
        Some(ListenerStats {
            panics: 3,
            overruns: 0
        })
    );

    // In the async connect path too.
    struct ConnectPanics;
    #[async_trait::async_trait]
    impl Listener for ConnectPanics {
        async fn process_connect(
            &self,
            _: HostId,
            _: &StartupCommand,
            _: bool,
        ) -> Result<(), ConnectError> {
            tokio::task::yield_now().await;
            panic!("connect bug");
        }
    }
    let r = Registry::default();
    let bad = r.register(Arc::new(ConnectPanics), Interest::CONNECTIONS, false);
    r.register(
        Arc::new(Recorder::new("next", &log)),
        Interest::CONNECTIONS,
        false,
    );
    assert_eq!(
        r.dispatch_connect(H, &StartupCommand::default(), false)
            .await,
        Ok(())
    );
    assert_eq!(take(&log), ["next:connect"]);
    assert_eq!(r.stats(bad).unwrap().panics, 1);
}

static FAKE_NOW_MS: AtomicU64 = AtomicU64::new(0);
fn fake_now() -> tokio::time::Instant {
    // A clock the test listener moves from inside a plain callback.
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(tokio::time::Instant::now)
        + Duration::from_millis(FAKE_NOW_MS.load(Ordering::SeqCst))
}

struct Slow;
impl Listener for Slow {
    fn process_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> bool {
        FAKE_NOW_MS.fetch_add(500, Ordering::SeqCst);
        false
    }
}

#[tokio::test(start_paused = true)]
async fn overruns_are_counted_and_the_others_still_run() {
    let log = Log::default();
    let r = Registry::with_clock(
        RegistryConfig {
            callback_budget: Duration::from_millis(100),
            ..Default::default()
        },
        fake_now,
    );
    let fast = r.register(
        Arc::new(Recorder::new("fast", &log)),
        Interest::COMMANDS,
        false,
    );
    let slow = r.register(Arc::new(Slow), Interest::COMMANDS, false);
    r.register(
        Arc::new(Recorder::new("after", &log)),
        Interest::COMMANDS,
        false,
    );
    r.dispatch_commands(H, Sequence(0), &ping());
    assert_eq!(take(&log), ["fast:commands", "after:commands"]);
    assert_eq!(r.stats(slow).unwrap().overruns, 1);
    assert_eq!(r.stats(fast).unwrap().overruns, 0);

    // An async connect over its budget is abandoned; the next listener still runs.
    struct Hangs;
    #[async_trait::async_trait]
    impl Listener for Hangs {
        async fn process_connect(
            &self,
            _: HostId,
            _: &StartupCommand,
            _: bool,
        ) -> Result<(), ConnectError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(ConnectError::shutdown("too late"))
        }
    }
    let r = Registry::new(RegistryConfig {
        connect_budget: Duration::from_secs(60),
        ..Default::default()
    });
    let hangs = r.register(Arc::new(Hangs), Interest::CONNECTIONS, false);
    r.register(
        Arc::new(Recorder::new("next", &log)),
        Interest::CONNECTIONS,
        false,
    );
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        r.dispatch_connect(H, &StartupCommand::default(), false)
            .await,
        Ok(())
    );
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(60));
    assert_eq!(take(&log), ["next:connect"]);
    assert_eq!(r.stats(hangs).unwrap().overruns, 1);
}

#[tokio::test(start_paused = true)]
async fn request_listener_hears_its_answer_once_or_times_out_once() {
    let log = Log::default();
    let r = Registry::new(RegistryConfig {
        default_request_timeout: Duration::from_secs(1800),
        ..Default::default()
    });
    r.register(
        Arc::new(Recorder::new("monitor", &log)),
        Interest::COMMANDS,
        false,
    );

    // Answered in time: heard once, then dropped (not recurring); no timeout later.
    r.register_request_listener(
        H,
        Sequence(1),
        Arc::new(Recorder {
            timeout: Some(Duration::from_secs(30)),
            ..Recorder::new("req1", &log)
        }),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.dispatch_answers(H, Sequence(1), &[Answer::ok()]);
    r.dispatch_answers(H, Sequence(1), &[Answer::ok()]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        take(&log),
        ["req1:answers1", "monitor:answers1", "monitor:answers1"]
    );

    // Not answered: process_timeout once after its timeout, then gone.
    let t0 = tokio::time::Instant::now();
    r.register_request_listener(
        H,
        Sequence(2),
        Arc::new(Recorder {
            timeout: Some(Duration::from_secs(30)),
            ..Recorder::new("req2", &log)
        }),
    );
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(take(&log).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(take(&log), ["req2:timeout2"]);
    assert!(tokio::time::Instant::now() - t0 >= Duration::from_secs(30));
    r.dispatch_answers(H, Sequence(2), &[Answer::ok()]);
    assert_eq!(
        take(&log),
        ["monitor:answers2"],
        "dropped after its timeout"
    );

    // Timeout 0 means the default (CloudStack fired at once).
    r.register_request_listener(
        H,
        Sequence(3),
        Arc::new(Recorder {
            timeout: Some(Duration::ZERO),
            ..Recorder::new("req3", &log)
        }),
    );
    tokio::time::sleep(Duration::from_secs(1799)).await;
    assert!(take(&log).is_empty(), "not at once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(take(&log), ["req3:timeout3"]);

    // No timeout: waits for ever; recurring: hears every answer until unregistered.
    let id = r.register_request_listener(
        H,
        Sequence(4),
        Arc::new(Recorder {
            recurring: true,
            ..Recorder::new("req4", &log)
        }),
    );
    tokio::time::sleep(Duration::from_secs(100_000)).await;
    r.dispatch_answers(H, Sequence(4), &[Answer::ok()]);
    r.dispatch_answers(H, Sequence(4), &[Answer::ok()]);
    assert_eq!(
        take(&log),
        [
            "req4:answers4",
            "monitor:answers4",
            "req4:answers4",
            "monitor:answers4"
        ]
    );
    assert_eq!(r.pending_requests(), 1);
    assert!(r.unregister(id));
    assert_eq!(r.pending_requests(), 0);
    r.shutdown().await;
}

#[tokio::test]
async fn mock_listener_sees_the_dispatch() {
    let mut mock = MockListener::new();
    mock.expect_process_commands()
        .withf(|host, seq, cmds| *host == H && seq.0 == 9 && cmds.len() == 1)
        .times(1)
        .return_const(true);
    mock.expect_process_connect()
        .times(1)
        .returning(|_, _, _| Err(ConnectError::shutdown("no")));
    let r = Registry::default();
    let id = r.register(Arc::new(mock), Interest::ALL, false);
    r.dispatch_commands(H, Sequence(9), &ping());
    let err = r
        .dispatch_connect(H, &StartupCommand::default(), true)
        .await
        .unwrap_err();
    assert_eq!(err.listener, id);
}
