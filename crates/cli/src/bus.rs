//! How the client commands read `--url`: one server, or several servers of one bus
//! separated by commas (the first is tried first, the others are failovers).

use agentbus::{Client, ClientBuilder};

/// A client builder for `urls`: `ws://a:3030` or `ws://a:3030,ws://b:3030`.
pub fn builder(urls: &str) -> ClientBuilder {
    let mut parts = urls.split(',').map(str::trim).filter(|u| !u.is_empty());
    let mut builder = Client::builder(parts.next().unwrap_or(urls));
    for other in parts {
        builder = builder.failover(other);
    }
    builder
}
