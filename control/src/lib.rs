//! Rudder's control plane: the API server and its store, the scheduler and the
//! controllers; the node agent lands here next (see ARCHITECTURE.md). Only the API server
//! touches the store; everything else is an API client.

pub mod apiserver;
pub mod controllers;
pub mod dns;
pub mod leaderelection;
pub mod node;
pub mod quota;
pub mod scheduler;
pub mod store;
pub mod up;
