//! Rudder's control plane. The API server, its store, the scheduler, the controllers and
//! the node agent land here (see ARCHITECTURE.md); only the API server touches the store.
