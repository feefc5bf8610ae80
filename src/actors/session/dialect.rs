//! Frames of a dialect session (`protocol::dialect`): decoded by the session's
//! dialect into what to do, then done through the very methods a native command uses,
//! so subscription limits, read grants, the error budget and reply order are the
//! native ones.

use super::{Ctx, Session};
use crate::protocol::dialect::Inbound;
use crate::protocol::Reply;
use crate::routing::SubscriptionSpec;

impl Session {
    pub(super) fn on_dialect_text(&mut self, text: &str, ctx: &mut Ctx) {
        let Some(dialect) = &self.dialect else {
            return;
        };
        let max = self.shared.config.limits.max_command_bytes;
        let inbound = match dialect.decode(text, max) {
            Ok(inbound) => inbound,
            Err(e) => return self.fail(ctx, &e, None),
        };
        match inbound {
            Inbound::Ping => self.send(
                ctx,
                &Reply::Pong {
                    server_time: chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    request_id: None,
                },
            ),
            Inbound::Ignore => {}
            Inbound::Unsubscribe => self.unsubscribe_all(ctx),
            Inbound::Subscribe(object) => match SubscriptionSpec::from_json(object) {
                Ok(spec) => {
                    // One subscription per dialect connection: the new one replaces it.
                    self.unsubscribe_all(ctx);
                    self.subscribe(spec, None, ctx);
                }
                Err(e) => self.fail(ctx, &e, None),
            },
        }
    }

    /// Ends every subscription of the connection, each as a native `unsubscribe`
    /// (its reply, which dialects have no frame for, is not sent).
    fn unsubscribe_all(&mut self, ctx: &mut Ctx) {
        let ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        for id in ids {
            self.unsubscribe(id, None, ctx);
        }
    }
}
