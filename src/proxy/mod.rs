//! The Pingora glue: [`Warden`] implements `ProxyHttp` for every request (plain absolute-form
//! and inside intercepted tunnels), and the front door turns raw connections into either
//! HTTP sessions for it or blind tunnels. Each phase builds plain inputs from the `Session`,
//! calls a stage module (`target`, `policy`, `tls`, `telemetry`) and applies the result.

mod aws;
mod budget;
mod buffered;
mod chained;
mod ctx;
mod edit;
mod front_door;
mod head;
mod http1;
mod http2;
mod io;
mod llm;
mod mcp;
mod tunnel;
mod upgrade;
mod warden;

pub use ctx::RequestCtx;
pub use front_door::FrontDoor;
pub use warden::Warden;
