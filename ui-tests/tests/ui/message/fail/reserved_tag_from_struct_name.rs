// No `type` override: the default tag of `RpcError` is `RPC_ERROR`, which is reserved.
#[derive(ws_kit::Message)]
struct RpcError {
    code: String,
}

fn main() {}
