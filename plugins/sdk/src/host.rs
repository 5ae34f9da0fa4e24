//! The services the host offers every plugin: logging, clocks, the plugin's config, events,
//! metrics and keyframe requests. Built for wasm32 they call the host; built for any other target
//! (a plugin's own `cargo test`) they go to the [`mock`](crate::mock) host instead.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

#[cfg(all(feature = "frame", not(feature = "packet")))]
use crate::bindings::frame::wasmcast::plugin::host as wit_host;
#[cfg(feature = "packet")]
use crate::bindings::packet::wasmcast::plugin::host as wit_host;
#[cfg(all(feature = "picture", not(any(feature = "packet", feature = "frame"))))]
use crate::bindings::picture::wasmcast::plugin::host as wit_host;

#[cfg(target_arch = "wasm32")]
use wit_host as imports;

#[cfg(not(target_arch = "wasm32"))]
use crate::mock as imports;

pub use wit_host::Level;

/// Writes `message` to the server's log under this plugin's and its route's names.
///
/// Lines printed to stdout and stderr reach the log too (at info and warn), but `log` keeps the level.
pub fn log(level: Level, message: &str) {
    imports::log(level, message);
}

/// Microseconds on a clock that never goes backwards.
pub fn monotonic_micros() -> u64 {
    imports::monotonic_micros()
}

/// Microseconds since the Unix epoch, from the host's wall clock.
pub fn wall_clock_micros() -> u64 {
    imports::wall_clock_micros()
}

/// The name of the route this instance runs on.
pub fn route() -> String {
    imports::route()
}

/// Publishes the event `name` with `payload` (any serializable value, at most 4 KiB of JSON): the
/// server's `/api/v1/events`, its status page and the webhooks of the config hear it. A plugin
/// may emit 20 events a second on its route; the host counts the rest without sending them. The error says
/// what is wrong with the name (1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`) or the payload.
pub fn emit(name: &str, payload: &impl serde::Serialize) -> Result<(), String> {
    let payload = serde_json::to_string(payload).map_err(|err| err.to_string())?;
    imports::emit(name, &payload)
}

/// Sets this plugin's metric `name` on its route (shown by `/metrics` and the API).
pub fn set_metric(name: &str, value: f64) {
    imports::set_metric(name, value);
}

/// Adds `delta` to this plugin's metric `name`.
pub fn add_metric(name: &str, delta: f64) {
    imports::add_metric(name, delta);
}

/// The stream this instance sees, as JSON (see `stream-description` in wit/plugin.wit): read it
/// in `new`; when a new publisher brings another stream, the host makes a new instance.
pub fn stream_description() -> String {
    imports::stream_description()
}

/// Asks the route for a keyframe: its encoder makes one at once when the route re-encodes.
pub fn request_keyframe() {
    imports::request_keyframe();
}

/// The plugin's `config` table from the server's configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    table: Map<String, Value>,
}

impl Config {
    /// The config the host holds for this instance.
    #[doc(hidden)]
    pub fn from_host() -> Result<Config, String> {
        Config::from_json(&imports::config())
    }

    /// A config from its JSON text, for tests of a plugin outside the host.
    pub fn from_json(json: &str) -> Result<Config, String> {
        match serde_json::from_str(json) {
            Ok(Value::Object(table)) => Ok(Config { table }),
            Ok(_) => Err("the plugin config is not a table".into()),
            Err(err) => Err(format!("the plugin config is not valid JSON: {err}")),
        }
    }

    /// The whole table as a `T` (a struct with `#[serde(deny_unknown_fields)]` catches misspelt
    /// keys); the error names the key and what is wrong, for the server's config check.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(Value::Object(self.table.clone()))
            .map_err(|err| format!("config: {err}"))
    }

    /// The value of `key` as a `T`, or `None` when the key is absent.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.table
            .get(key)
            .map(|value| {
                serde_json::from_value(value.clone()).map_err(|err| format!("config.{key}: {err}"))
            })
            .transpose()
    }

    /// The raw table.
    pub fn table(&self) -> &Map<String, Value> {
        &self.table
    }
}
