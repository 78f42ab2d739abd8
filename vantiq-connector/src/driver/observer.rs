//! Makes a source's state visible: to its [`Source`] handle (and whoever waits on it), and to
//! the set's health, without blocking the driver.

use vantiq_health::Health;
use vantiq_proto::{Connection, ConnectionState, Json};

use crate::source::Source;

pub(super) struct Observer {
    source: Source,
    health: Health,
    last: Option<ConnectionState>,
}

impl Observer {
    pub(super) fn new(source: Source, health: Health) -> Self {
        Observer {
            source,
            health,
            last: None,
        }
    }

    /// Publishes the connection's state if it changed (or, with a configuration, always).
    pub(super) fn publish(&mut self, conn: &Connection, config: Option<Json>) {
        let state = conn.state();
        if self.last == Some(state) && config.is_none() {
            return;
        }
        self.last = Some(state);
        // Health applies the change in the background (a probe may have to open or close):
        // never a bind, a thread join or a connect inside the driver's poll.
        self.health.report_source_state(self.source.name(), state);
        self.source.set_state(state, config);
    }

    /// The connector stopped without a word from the connection (its task was dropped).
    pub(super) fn abandoned(&mut self) {
        if self.last != Some(ConnectionState::Closed) {
            self.last = Some(ConnectionState::Closed);
            self.health
                .report_source_state(self.source.name(), ConnectionState::Closed);
            self.source.set_state(ConnectionState::Closed, None);
        }
    }
}
