//! `odp-ctl devices`

use odp_core::verbs::{self, Context};
use serde::Serialize;

use crate::output::{table, Output};

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    info: verbs::DeviceInfo,
    odp: Option<bool>,
    odp_implicit: Option<bool>,
    ports: Option<u8>,
}

pub fn run(out: &Output) -> anyhow::Result<()> {
    let devices = verbs::list_devices()?;
    if devices.is_empty() {
        return Err(odp_core::Error::NoDevices.into());
    }
    let rows: Vec<Row> = devices
        .into_iter()
        .map(|info| {
            // A device that cannot be opened (permissions, a dead port) is still listed.
            let ctx = Context::open(Some(&info.name)).ok();
            let attrs = ctx.as_ref().map(|c| c.attributes().clone());
            Row {
                odp: attrs.as_ref().map(|a| a.odp.supported),
                odp_implicit: attrs.as_ref().map(|a| a.odp.implicit),
                ports: attrs.as_ref().map(|a| a.phys_port_cnt),
                info,
            }
        })
        .collect();
    if out.json {
        return out.json(&serde_json::json!({ "devices": rows }));
    }
    let mut t = table(&["DEVICE", "NODE GUID", "TYPE", "TRANSPORT", "PORTS", "ODP"]);
    let yes_no = |v: Option<bool>, yes: &str| match v {
        Some(true) => yes.to_string(),
        Some(false) => "no".to_string(),
        None => "?".to_string(),
    };
    for r in &rows {
        let odp = match (r.odp, r.odp_implicit) {
            (Some(true), Some(true)) => "explicit+implicit".to_string(),
            (odp, _) => yes_no(odp, "explicit"),
        };
        t.add_row(vec![
            r.info.name.clone(),
            r.info.node_guid.clone(),
            r.info.node_type.to_string(),
            r.info.transport.to_string(),
            r.ports.map_or("?".into(), |p| p.to_string()),
            odp,
        ]);
    }
    println!("{t}");
    Ok(())
}
