//! `odp-ctl caps [DEVICE]`

use odp_core::verbs::{Context, PortInfo, TransportOdpCaps};

use crate::output::{pairs, table, Output};

#[derive(clap::Args)]
pub struct Args {
    /// Device name (default: the first device).
    pub device: Option<String>,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let ctx = Context::open(args.device.as_deref())?;
    let attrs = ctx.attributes();
    let ports = (1..=attrs.phys_port_cnt)
        .map(|p| ctx.port(p))
        .collect::<odp_core::Result<Vec<PortInfo>>>()?;
    if out.json {
        return out.json(&serde_json::json!({ "device": attrs, "ports": ports }));
    }
    let odp = &attrs.odp;
    print!(
        "{}",
        pairs(&[
            ("device", attrs.name.clone()),
            ("node_guid", attrs.node_guid.clone()),
            ("fw_ver", attrs.fw_ver.clone()),
            (
                "vendor",
                format!(
                    "{:#x} part {} hw {:#x}",
                    attrs.vendor_id, attrs.vendor_part_id, attrs.hw_ver
                )
            ),
            ("max_mr_size", format!("{:#x}", attrs.max_mr_size)),
            ("page_size_cap", format!("{:#x}", attrs.page_size_cap)),
            (
                "max_mr / max_pd",
                format!("{} / {}", attrs.max_mr, attrs.max_pd)
            ),
            (
                "max_qp / max_qp_wr",
                format!("{} / {}", attrs.max_qp, attrs.max_qp_wr)
            ),
            (
                "max_cqe / max_sge",
                format!("{} / {}", attrs.max_cqe, attrs.max_sge)
            ),
            ("atomic_cap", attrs.atomic_cap.to_string()),
            (
                "odp",
                format!(
                    "{} (general caps {:#x}; implicit: {})",
                    if odp.supported {
                        "SUPPORTED"
                    } else {
                        "NOT SUPPORTED"
                    },
                    odp.general_raw,
                    if odp.implicit { "yes" } else { "no" }
                )
            ),
        ])
    );
    let mut header = vec!["ODP"];
    header.extend(odp.rc.flags().map(|(name, _)| name));
    let mut t = table(&header);
    let row = |name: &str, c: &TransportOdpCaps| {
        std::iter::once(name.to_string())
            .chain(
                c.flags()
                    .map(|(_, set)| if set { "yes" } else { "-" }.to_string()),
            )
            .collect::<Vec<_>>()
    };
    t.add_row(row("rc", &odp.rc));
    t.add_row(row("uc", &odp.uc));
    t.add_row(row("ud", &odp.ud));
    t.add_row(row("xrc", &odp.xrc));
    println!("\n{t}");
    for p in &ports {
        println!(
            "\nport {}: {} {} active_mtu {} max_mtu {} lid {}",
            p.port, p.state, p.link_layer, p.active_mtu, p.max_mtu, p.lid
        );
        let mut g = table(&["GID", "ADDRESS", "TYPE", "IFINDEX"]);
        for gid in &p.gids {
            g.add_row(vec![
                gid.index.to_string(),
                gid.gid.clone(),
                gid.kind.to_string(),
                gid.ifindex.to_string(),
            ]);
        }
        println!("{g}");
    }
    Ok(())
}
