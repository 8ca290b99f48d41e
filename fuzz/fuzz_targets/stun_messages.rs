//! Any datagram must decode to a STUN binding message or a clean error,
//! never panic; decoded requests and responses must round-trip.
#![no_main]

use fogconnect_proto::stun::{self, Binding, BindingRequest, SuccessResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stun::integrity_ok(data, "fuzz password");
    let _ = stun::looks_like_stun(data);
    match stun::decode(data) {
        Ok(Binding::Success { txid, mapped, other, origin }) => {
            let response = SuccessResponse { mapped, other, origin, pwd: None, server: false };
            let bytes = stun::binding_success(txid, &response).expect("re-encode");
            assert_eq!(stun::decode(&bytes), Ok(Binding::Success { txid, mapped, other, origin }));
        }
        Ok(Binding::Request { txid, change_ip, change_port, use_candidate, .. }) => {
            let request = BindingRequest { change_ip, change_port, auth: None, use_candidate };
            let bytes = stun::binding_request(txid, &request).expect("re-encode");
            let Ok(Binding::Request { change_ip: ci, change_port: cp, use_candidate: uc, .. }) = stun::decode(&bytes)
            else {
                panic!("re-encoded request does not decode")
            };
            assert_eq!((ci, cp, uc), (change_ip, change_port, use_candidate));
        }
        _ => {}
    }
});
