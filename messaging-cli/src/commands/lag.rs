//! `lag`: messages a group has not settled yet.

use std::io::Write;

use messaging::{Broker, Inspect};

use crate::args::LagArgs;
use crate::error::{CliError, failed};

pub(crate) async fn lag(broker: &Broker, l: &LagArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let depth = broker.depth(&l.topic, &l.group).await.map_err(failed)?;
    let Some(depth) = depth else {
        return Err(CliError::Failed(format!(
            "group {} of {} does not exist on {}",
            l.group,
            l.topic,
            broker.features().broker
        )));
    };
    writeln!(out, "{}\t{}\t{depth}", l.topic, l.group).map_err(failed)?;
    if let Some(kafka) = broker.as_kafka() {
        for p in kafka
            .lag(&l.topic, &l.group)
            .await
            .map_err(failed)?
            .unwrap_or_default()
        {
            let committed = p
                .committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string());
            writeln!(
                out,
                "  {}[{}]\tcommitted {committed}\thigh {}\tlag {}",
                p.topic, p.partition, p.high_watermark, p.lag
            )
            .map_err(failed)?;
        }
    }
    Ok(())
}
