//! Every request parser of the API (HTTP/JSON-RPC JSON bodies, registerBranch bodies, gRPC protobuf, topic
//! inputs) and the one validation on arbitrary bytes: nothing may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    braid::api::fuzz_request_parsers(data);
});
