//! Generated items: commands and answers of every variant with random field values, and the
//! cases (text, steps, original value) built from them.

use std::collections::BTreeMap;

use cloudha_protocol::*;

use super::json::{Style, tree, verbose_vm_states, write_json};
use super::mutate::{mutate_text, mutate_tree};
use super::rng::Rng;

const HOST_TYPES: &[HostType] = &[
    HostType::Routing,
    HostType::Storage,
    HostType::ConsoleProxy,
    HostType::SecondaryStorage,
    HostType::SecondaryStorageVm,
    HostType::SecondaryStorageCmdExecutor,
    HostType::TrafficMonitor,
    HostType::ExternalFirewall,
    HostType::ExternalLoadBalancer,
    HostType::LocalSecondaryStorage,
    HostType::L2Networking,
];
const HYPERVISORS: &[HypervisorType] = &[
    HypervisorType::Kvm,
    HypervisorType::Lxc,
    HypervisorType::XenServer,
    HypervisorType::VMware,
    HypervisorType::Hyperv,
    HypervisorType::Simulator,
    HypervisorType::BareMetal,
    HypervisorType::Ovm3,
    HypervisorType::None,
];
const POWER: &[VmPowerState] = &[
    VmPowerState::PowerOn,
    VmPowerState::PowerOff,
    VmPowerState::PowerUnknown,
    VmPowerState::PowerReportMissing,
];
const REASONS: &[ShutdownReason] = &[
    ShutdownReason::Requested,
    ShutdownReason::Update,
    ShutdownReason::DeleteHost,
    ShutdownReason::Unknown,
];

fn vm_states(rng: &mut Rng) -> Vec<VmStateReport> {
    (0..rng.below(6))
        .map(|_| VmStateReport {
            vm: VmId(rng.u64()),
            power: *rng.pick(POWER),
        })
        .collect()
}

/// A command of the variant `Command::TYPE_NAMES[which]`, with random field values.
fn command(rng: &mut Rng, which: usize) -> Command {
    let c = match Command::TYPE_NAMES[which] {
        "startup" => Command::Startup(StartupCommand {
            host_id: HostId(rng.u64()),
            name: rng.string(),
            version: rng.string(),
            host_type: rng.option(|r| *r.pick(HOST_TYPES)),
            hypervisor: rng.option(|r| *r.pick(HYPERVISORS)),
            cluster: rng.option(|r| ClusterId(r.u64())),
            pod: rng.option(|r| PodId(r.u64())),
            zone: rng.option(|r| ZoneId(r.u64())),
            vm_states: vm_states(rng),
        }),
        "ready" => Command::Ready(ReadyCommand {
            host_id: HostId(rng.u64()),
        }),
        "ping" => Command::Ping(PingCommand {
            host_id: HostId(rng.u64()),
        }),
        "ping_routing" => Command::PingRouting(PingRoutingCommand {
            host_id: HostId(rng.u64()),
            vm_states: vm_states(rng),
            gateway_accessible: rng.chance(50),
        }),
        "check_health" => Command::CheckHealth(CheckHealthCommand {}),
        "check_on_host" => Command::CheckOnHost(CheckOnHostCommand {
            target: HostId(rng.u64()),
        }),
        "fence" => Command::Fence(FenceCommand {
            target: HostId(rng.u64()),
            vm: rng.option(|r| VmId(r.u64())),
        }),
        "ping_test" => Command::PingTest(PingTestCommand {
            target: HostId(rng.u64()),
        }),
        "check_virtual_machine" => Command::CheckVirtualMachine(CheckVirtualMachineCommand {
            vm: VmId(rng.u64()),
        }),
        "start_vm" => Command::StartVm(StartVmCommand {
            vm: VmId(rng.u64()),
            ha: rng.chance(50),
        }),
        "stop_vm" => Command::StopVm(StopVmCommand {
            vm: VmId(rng.u64()),
            force: rng.chance(50),
        }),
        "shutdown" => Command::Shutdown(ShutdownCommand {
            reason: *rng.pick(REASONS),
            details: rng.string(),
        }),
        "agent_control" => Command::AgentControl(AgentControlCommand {
            name: rng.string(),
            params: (0..rng.below(4))
                .map(|_| (rng.string(), rng.string()))
                .collect::<BTreeMap<_, _>>(),
        }),
        other => panic!("no generator for command `{other}`: add one"),
    };
    assert_eq!(c.type_name(), Command::TYPE_NAMES[which]);
    c
}

/// An answer of the variant `Answer::TYPE_NAMES[which]`, with random field values.
fn answer(rng: &mut Rng, which: usize) -> Answer {
    let a = match Answer::TYPE_NAMES[which] {
        "startup_answer" => Answer::Startup(StartupAnswer {
            success: rng.chance(50),
            host_id: HostId(rng.u64()),
            ping_interval_ms: rng.u64(),
            details: rng.string(),
        }),
        "ping_answer" => Answer::Ping(PingAnswer {
            avoid_ms: (0..rng.below(4)).map(|_| rng.string()).collect(),
            send_startup: rng.chance(50),
        }),
        "check_on_host_answer" => Answer::CheckOnHost(CheckOnHostAnswer {
            success: rng.chance(50),
            alive: rng.chance(50),
            heartbeat_age_ms: rng.option(Rng::u64),
            details: rng.string(),
        }),
        "fence_answer" => Answer::Fence(FenceAnswer {
            success: rng.chance(50),
            alive: rng.chance(50),
            heartbeat_age_ms: rng.option(Rng::u64),
            details: rng.string(),
        }),
        "check_virtual_machine_answer" => Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
            success: rng.chance(50),
            power: *rng.pick(POWER),
            details: rng.string(),
        }),
        "answer" => Answer::Generic(GenericAnswer {
            success: rng.chance(50),
            details: rng.string(),
        }),
        other => panic!("no generator for answer `{other}`: add one"),
    };
    assert_eq!(a.type_name(), Answer::TYPE_NAMES[which]);
    a
}

/// One generated item: its text, what was done to it, and the value it encodes when unmutated.
pub(super) struct Case {
    pub(super) text: String,
    pub(super) steps: Vec<&'static str>,
    pub(super) original: Option<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Item {
    Command(Command),
    Answer(Answer),
}

pub(super) fn generate(rng: &mut Rng, mutate: bool) -> Case {
    let n_commands = Command::TYPE_NAMES.len();
    let which = rng.below(n_commands + Answer::TYPE_NAMES.len());
    let item = if which < n_commands {
        Item::Command(command(rng, which))
    } else {
        Item::Answer(answer(rng, which - n_commands))
    };
    let mut j = match &item {
        Item::Command(c) => tree(c),
        Item::Answer(a) => tree(a),
    };
    let mut steps = Vec::new();
    if rng.chance(30) {
        verbose_vm_states(&mut j, rng);
        steps.push("verbose vm_states");
    }
    let style = Style {
        spaces: rng.chance(10),
        escapes: rng.chance(10),
    };
    if style.spaces {
        steps.push("whitespace");
    }
    if style.escapes {
        steps.push("escapes");
    }
    let mut mutated = false;
    if mutate {
        for _ in 0..=rng.below(3) {
            steps.push(mutate_tree(&mut j, rng));
            mutated = true;
        }
    }
    let mut text = String::new();
    write_json(&j, rng, style, &mut text);
    if mutate && rng.chance(25) {
        steps.push(mutate_text(&mut text, rng));
        mutated = true;
    }
    Case {
        text,
        steps,
        original: (!mutated).then_some(item),
    }
}
