//! What the HTTP and WebSocket handlers share: the services, and the
//! registry of open documents.

use std::ops::Deref;
use std::sync::Arc;

use crate::document::registry::Registry;
use crate::state::Services;

/// The router's state.
pub(crate) struct Shared {
    services: Arc<Services>,
    /// Open documents.
    pub(crate) registry: Arc<Registry>,
}

impl Shared {
    pub(crate) fn new(services: Services) -> Shared {
        Shared {
            services: Arc::new(services),
            registry: Arc::new(Registry::default()),
        }
    }

    /// The services, for a document actor.
    pub(crate) fn services(&self) -> &Arc<Services> {
        &self.services
    }
}

impl Deref for Shared {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}
