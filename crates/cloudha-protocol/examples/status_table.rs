//! Prints the host status transition table (spec §4.2) from the data the state machine uses.
//!
//! `cargo run -p cloudha-protocol --example status_table`

use cloudha_protocol::TRANSITIONS;

fn main() {
    println!("{:<14} {:<22} TO", "FROM", "EVENT");
    for t in TRANSITIONS {
        let from = t.from.map_or("(null)", |s| s.as_str());
        println!("{from:<14} {:<22} {}", t.event.as_str(), t.to);
    }
}
