//! The reference evaluator against verdicts taken from Cilium's own sources
//! (tests/cilium_cases.toml), not from palisade's reading of the policy
//! language: each case's packets must get the verdict Cilium gives them.

#[path = "support/cilium_cases.rs"]
mod cilium_cases;

use palisade_common::verdict;
use palisade_policy::{NodeContext, compile, evaluate};

#[test]
fn the_evaluator_gives_cilium_s_verdicts() {
    let cases = cilium_cases::cases();
    assert!(cases.len() >= 10, "the case file lost cases");
    let mut failures = Vec::new();
    for case in &cases {
        let table = compile(&case.policies, &NodeContext::default())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        for packet in &case.packets {
            let got = evaluate(&table, packet.direction, &packet.connection);
            if got.verdict != packet.verdict {
                failures.push(format!(
                    "{}: {:?} {:?}: Cilium says {}, the evaluator {} ({got:?})\n  source: {}",
                    case.name,
                    packet.direction,
                    packet.connection,
                    verdict::name(packet.verdict),
                    verdict::name(got.verdict),
                    case.source,
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
