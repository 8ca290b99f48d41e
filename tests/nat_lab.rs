//! NAT traversal in the network-namespace NAT lab (needs root; CI runs as
//! root): classification of every NAT kind, the 36-pair matrix, and
//! birthday probing between a port-restricted cone and a symmetric NAT.

mod common;
mod natlab;

use std::time::Duration;

use anyhow::{Context, ensure};
use natlab::{Lab, NatKind, STUN};

/// `fogconnect nat` from behind each kind of router reports that kind.
#[test]
fn nat_command_classifies_every_lab_nat_kind() -> anyhow::Result<()> {
    natlab::lab_available()?;
    let expected = [
        (NatKind::Open, "open internet", "endpoint-independent", "endpoint-independent"),
        (NatKind::FullCone, "full cone", "endpoint-independent", "endpoint-independent"),
        (NatKind::AddressRestricted, "address-restricted cone", "endpoint-independent", "address-dependent"),
        (NatKind::PortRestricted, "port-restricted cone", "endpoint-independent", "address-and-port-dependent"),
        (NatKind::Symmetric, "symmetric", "address-and-port-dependent", "address-and-port-dependent"),
        (NatKind::UdpBlocked, "UDP blocked", "unknown", "unknown"),
    ];
    for (kind, name, mapping, filtering) in expected {
        let mut lab = Lab::new(kind, NatKind::Open)?;
        lab.start_stun()?;
        let out = lab.output("host-a", &["nat", "--stun", STUN], &[])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{}: {}", kind.name(), String::from_utf8_lossy(&out.stderr));
        println!("--- {}\n{stdout}", kind.name());
        ensure!(stdout.contains(&format!("nat type:        {name}\n")), "{}: {stdout}", kind.name());
        ensure!(stdout.contains(&format!("mapping:         {mapping}\n")), "{}: {stdout}", kind.name());
        ensure!(stdout.contains(&format!("filtering:       {filtering}\n")), "{}: {stdout}", kind.name());
        if kind == NatKind::Symmetric {
            ensure!(stdout.contains("port allocation: random"), "{stdout}");
        }
        if kind != NatKind::UdpBlocked {
            let public = if kind == NatKind::Open { "198.51.100.2:" } else { "203.0.113.21:" };
            ensure!(stdout.contains(&format!("public address:  {public}")), "{stdout}");
        }
    }
    Ok(())
}
