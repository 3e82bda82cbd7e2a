//! Shows how local training is going: a progress bar on a terminal, a log line per epoch
//! otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::trainer::TrainProgress;

/// Reports one round's local training, fed with [`TrainProgress`] from a
/// [`Trainer`](crate::trainer::Trainer).
///
/// If stderr is a terminal it draws an indicatif bar, `round N [====    ] epoch e/E  loss x`;
/// otherwise (a service, a test, a redirected log) it emits one `tracing::info!` event per
/// finished epoch. The bar is finished when the reporter is dropped.
///
/// ```no_run
/// # use medfed_node::progress::Progress;
/// # use medfed_node::trainer::TrainProgress;
/// let mut progress = Progress::new(3);
/// let mut report = |p: TrainProgress| progress.update(&p);
/// // trainer.train(&spec, &params, &data, &plan, &mut report)?;
/// # let _ = &mut report;
/// ```
#[derive(Debug)]
pub struct Progress {
    /// The round being trained, shown in every report.
    round: u64,
    /// Where reports go.
    out: Output,
}

/// Where a [`Progress`] sends its reports.
#[derive(Debug)]
enum Output {
    /// A bar on the terminal; its length is set by the first update.
    Bar(ProgressBar),
    /// One `tracing` event per finished epoch.
    Log,
}

impl Progress {
    /// A reporter for `round`: a bar if stderr is a terminal, log lines otherwise.
    pub fn new(round: u64) -> Self {
        if std::io::stderr().is_terminal() {
            Self::with_bar(round, ProgressBar::new(0))
        } else {
            Self::log_only(round)
        }
    }

    /// A reporter for `round` that only logs, one `tracing::info!` event per finished epoch.
    pub fn log_only(round: u64) -> Self {
        Self {
            round,
            out: Output::Log,
        }
    }

    /// Records progress after one mini-batch.
    pub fn update(&mut self, p: &TrainProgress) {
        match &self.out {
            Output::Bar(bar) => {
                let total = u64::from(p.epochs) * p.batches as u64;
                if bar.length() != Some(total) {
                    bar.set_length(total);
                }
                bar.set_position(
                    u64::from(p.epoch.saturating_sub(1)) * p.batches as u64 + p.batch as u64,
                );
                bar.set_message(format!(
                    "epoch {}/{}  loss {:.4}",
                    p.epoch, p.epochs, p.loss
                ));
            }
            Output::Log if p.batch == p.batches => {
                tracing::info!(
                    round = self.round,
                    epoch = p.epoch,
                    epochs = p.epochs,
                    loss = p.loss,
                    "round {}  epoch {}/{}  loss {:.4}",
                    self.round,
                    p.epoch,
                    p.epochs,
                    p.loss
                );
            }
            Output::Log => {}
        }
    }

    /// Finishes the bar, leaving its last state on screen. Dropping the reporter does the same.
    pub fn finish(self) {}

    /// A reporter drawing on `bar`.
    fn with_bar(round: u64, bar: ProgressBar) -> Self {
        // The template is a constant that `style_template_parses` checks.
        let style = ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("round {round}"));
        Self {
            round,
            out: Output::Bar(bar),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Output::Bar(bar) = &self.out
            && !bar.is_finished()
        {
            bar.finish();
        }
    }
}

/// How the bar is drawn.
const BAR_TEMPLATE: &str = "{prefix}  [{bar:30}] {msg}";

#[cfg(test)]
mod tests {
    use super::*;

    fn step(epoch: u32, batch: usize) -> TrainProgress {
        TrainProgress {
            epoch,
            epochs: 3,
            batch,
            batches: 4,
            loss: 0.5 / f64::from(epoch),
        }
    }

    #[test]
    fn style_template_parses() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }

    #[test]
    fn bar_tracks_epochs_and_batches() {
        let bar = ProgressBar::hidden();
        let mut progress = Progress::with_bar(7, bar.clone());
        progress.update(&step(1, 1));
        assert_eq!((bar.position(), bar.length()), (1, Some(12)));
        progress.update(&step(2, 3));
        assert_eq!(bar.position(), 7);
        assert_eq!(bar.message(), "epoch 2/3  loss 0.2500");
        assert_eq!(bar.prefix(), "round 7");
        progress.finish();
        assert!(bar.is_finished());
    }

    #[test]
    fn log_mode_accepts_updates() {
        let mut progress = Progress::log_only(1);
        for epoch in 1..=3 {
            for batch in 1..=4 {
                progress.update(&step(epoch, batch));
            }
        }
    }
}
