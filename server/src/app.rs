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
    /// Open WebSocket connections per client address (`--max-connections-per-addr`).
    pub(crate) addr_counts: Arc<crate::connection::AddrCounts>,
    /// `/api` requests being served (`--max-api-requests`).
    pub(crate) api_permits: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    pub(crate) fn new(services: Services) -> Shared {
        let api_permits = Arc::new(tokio::sync::Semaphore::new(
            services.config.max_api_requests.max(1),
        ));
        Shared {
            services: Arc::new(services),
            registry: Arc::new(Registry::default()),
            addr_counts: Arc::default(),
            api_permits,
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
