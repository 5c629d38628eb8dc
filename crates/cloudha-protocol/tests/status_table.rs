//! The host status table checked cell by cell against spec §4.2 (copied verbatim below),
//! absent transitions included.

use cloudha_protocol::{Event, Status, TRANSITIONS};

/// `cloudstack-ha.md` §4.2, as published.
const SPEC_TABLE: &str = "\
| From \\ Event | AgentConnected | Ready | Ping | PingTimeout | AgentDisconnected | ShutdownRequested | HostDown | ManagementServerDown | WaitedTooLong | Remove | StartAgentRebalance | RebalanceCompleted | RebalanceFailed | Error |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| (null) | Connecting | | | | | | | | | | | | | |
| Creating | Connecting | | | | | | | | | | | | | Error |
| Connecting | Connecting | Up | Connecting | Alert | Alert | Disconnected | Down | Disconnected | | | | | | |
| Up | Connecting | | Up | Alert | Alert | Disconnected | Down | Disconnected | | Removed | Rebalancing | | | |
| Disconnected | Connecting | | Up | Alert | Disconnected | Disconnected | Down | Disconnected | Alert | Removed | | | | |
| Down | Connecting | | | Down | Down | | Down | Down | | Removed | | | | |
| Alert | Connecting | | Up | | Alert | Disconnected | Down | Alert | | Removed | | | | |
| Rebalancing | Connecting | | | | Rebalancing | | | Disconnected | | | | Connecting | Disconnected | |
| Error | Connecting | | | | | | | | | | | | | |
";

fn cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

#[test]
fn every_cell_matches_the_spec() {
    let mut lines = SPEC_TABLE.lines();
    let header = cells(lines.next().unwrap());
    let events: Vec<Event> = header[1..].iter().map(|e| e.parse().unwrap()).collect();
    lines.next(); // separator
    let mut rows = 0;
    let mut present = 0;
    let mut from_rows = Vec::new();
    for line in lines {
        let row = cells(line);
        assert_eq!(row.len(), events.len() + 1, "row {line}");
        let from: Option<Status> = match row[0] {
            "(null)" => None,
            s => Some(s.parse().unwrap()),
        };
        from_rows.push(from);
        rows += 1;
        for (event, cell) in events.iter().zip(&row[1..]) {
            let got = Status::transition(from, *event);
            if cell.is_empty() {
                let err = got.expect_err(&format!("{from:?} + {event} must have no transition"));
                assert_eq!((err.from, err.event), (from, *event));
            } else {
                present += 1;
                assert_eq!(got, Ok(cell.parse().unwrap()), "{from:?} + {event}");
            }
        }
        // RequestAgentRebalance has no transitions from anywhere.
        assert!(Status::transition(from, Event::RequestAgentRebalance).is_err());
    }
    assert_eq!(rows, 9);
    assert_eq!(
        present,
        TRANSITIONS.len(),
        "the table holds exactly the spec's cells"
    );
    // Statuses with no row in the spec have no outgoing transitions.
    for status in Status::ALL {
        if !from_rows.contains(&Some(status)) {
            for event in Event::ALL {
                assert!(
                    Status::transition(Some(status), event).is_err(),
                    "{status} + {event}"
                );
            }
        }
    }
}

#[test]
fn error_names_status_and_event() {
    let err = Status::Alert.next(Event::PingTimeout).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no host status transition from Alert on event PingTimeout"
    );
    let err = Status::transition(None, Event::Ping).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no host status transition from (null) on event Ping"
    );
}

#[test]
fn names_are_cloudstack_pascal_case_on_the_wire() {
    assert_eq!(serde_json::to_string(&Status::Up).unwrap(), "\"Up\"");
    assert_eq!(
        serde_json::to_string(&Event::ManagementServerDown).unwrap(),
        "\"ManagementServerDown\""
    );
    for s in Status::ALL {
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        assert_eq!(s.as_str().parse::<Status>(), Ok(s));
    }
    for e in Event::ALL {
        assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{e}\""));
        assert_eq!(e.as_str().parse::<Event>(), Ok(e));
    }
    assert!("up".parse::<Status>().is_err());
}
