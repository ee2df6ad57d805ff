//! Host-side bindings of the WIT contract in `wit/`.
//!
//! One `bindgen!` per role world; the shared `weft:connector` interfaces are
//! generated once (in `source`) and reused by the others, and `wasi:*` comes
//! from wasmtime-wasi / wasmtime-wasi-http so their linker glue applies.

/// The `source` world, and the shared `weft:connector` interfaces.
pub mod source {
    wasmtime::component::bindgen!({
        world: "weft:connector/source",
        path: "../wit",
        exports: { default: async },
        // Whole requests wait on the network: the call yields its fiber.
        // State storage errors trap rather than pass for "absent".
        imports: {
            "weft:connector/outbound.send-all": async,
            "weft:connector/state.get": trappable,
            "weft:connector/state.delete": trappable,
        },
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

/// The `transform` world.
pub mod transform {
    wasmtime::component::bindgen!({
        world: "weft:connector/transform",
        path: "../wit",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "weft:connector": super::source::weft::connector,
        },
    });
}

/// The `sink` world.
pub mod sink {
    wasmtime::component::bindgen!({
        world: "weft:connector/sink",
        path: "../wit",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "weft:connector": super::source::weft::connector,
        },
    });
}

pub use source::weft::connector::outbound;
pub use source::weft::connector::types as wit;

use crate::event::Event;

impl From<Event> for wit::Event {
    fn from(e: Event) -> Self {
        wit::Event {
            id: e.id,
            source: e.source,
            type_: e.ty,
            subject: e.subject,
            time: e.time,
            datacontenttype: e.datacontenttype,
            data: e.data,
            extensions: e.extensions,
        }
    }
}

impl From<wit::Event> for Event {
    fn from(e: wit::Event) -> Self {
        Event {
            id: e.id,
            source: e.source,
            ty: e.type_,
            subject: e.subject,
            time: e.time,
            datacontenttype: e.datacontenttype,
            data: e.data,
            extensions: e.extensions,
        }
    }
}
