//! `odp-ctl probes`: what can be traced here, and how.

use odp_ebpf::{Config, Session, Status};

use crate::output::{pairs, table, Output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub attach: super::launch::AttachArgs,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    // Attach for real (counting only) so the table says what works, not what should.
    let session = Session::start(&Config {
        emit_events: false,
        attach: args.attach.attach,
        ..Config::default()
    })?;
    let facts = session.facts();
    let plans = session.plans();
    if out.json {
        return out.json(&serde_json::json!({ "kernel": facts, "points": plans }));
    }
    let why = |r: &Option<String>| {
        r.clone()
            .map_or("works".to_string(), |r| format!("refused ({r})"))
    };
    print!(
        "{}",
        pairs(&[
            ("kernel", facts.release.clone()),
            ("fentry", why(&facts.fentry_refused)),
            ("kprobe", why(&facts.kprobe_refused)),
            (
                "preemption",
                preemption(&facts.preemption, args.attach.attach)
            ),
            (
                "libibverbs",
                facts
                    .libibverbs
                    .as_ref()
                    .map_or("not found".into(), |p| p.display().to_string())
            ),
        ])
    );
    let mut t = table(&["POINT", "GROUP", "TARGET", "METHOD", "STATUS"]);
    for p in plans {
        let (state, reason) = match &p.status {
            Status::Attached => ("attached".to_string(), String::new()),
            Status::Planned => ("planned".to_string(), String::new()),
            Status::Skipped(r) => ("skipped".to_string(), r.clone()),
            Status::Failed(r) => ("failed".to_string(), r.clone()),
        };
        t.add_row(vec![
            p.point.name().to_string(),
            p.group.to_string(),
            p.symbol.clone().unwrap_or_else(|| p.target.clone()),
            p.method.map_or("-".into(), |m| m.name().to_string()),
            if reason.is_empty() {
                state
            } else {
                format!("{state}: {reason}")
            },
        ]);
    }
    println!("\n{t}");
    let attached = plans
        .iter()
        .filter(|p| p.status == Status::Attached)
        .count();
    println!("{attached} of {} points attached", plans.len());
    Ok(())
}

fn preemption(p: &odp_ebpf::Preemption, preference: odp_ebpf::AttachPreference) -> String {
    let mode = p.mode.as_deref().unwrap_or("dynamic, mode unknown");
    let model = if p.preemptible {
        "kernel code preemptible"
    } else {
        "kernel code not preemptible"
    };
    let method = p.function_method(preference).name();
    format!(
        "{mode} ({model}, from {}): kernel functions prefer {method}",
        p.source
    )
}
