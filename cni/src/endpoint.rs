//! Registering endpoints with palisaded over its control socket.

use palisade_api::{Client, ClientError, EndpointKey, EndpointRegistration};
use rscni_types::error::Error;

/// Registers `registration`.
///
/// # Errors
///
/// Code 11 (try again later) when palisaded cannot be reached; 100+ when it
/// refuses.
pub async fn register(client: &Client, registration: &EndpointRegistration) -> Result<(), Error> {
    client
        .register_endpoint(registration)
        .await
        .map(drop)
        .map_err(refused)
}

/// Forgets the endpoint of `key`.
///
/// # Errors
///
/// As [`register`].
pub async fn remove(client: &Client, key: &EndpointKey) -> Result<(), Error> {
    client.remove_endpoint(key).await.map(drop).map_err(refused)
}

/// Whether palisaded answers.
///
/// # Errors
///
/// Code 50 (plugin not available) when it does not.
pub async fn available(client: &Client) -> Result<(), Error> {
    client
        .status()
        .await
        .map(drop)
        .map_err(|error| Error::PluginNotAvailable(error.to_string()))
}

/// The CNI error for a failed request: palisaded down is transient.
pub fn refused(error: ClientError) -> Error {
    match error {
        ClientError::Connect { .. } => Error::TryAgainLater(format!(
            "palisaded is not running, so palisade-cni cannot put pods under its policies: {error}"
        )),
        other => Error::Custom(
            103,
            "palisaded refused the endpoint".to_owned(),
            other.to_string(),
        ),
    }
}
