// `routes!` takes handler names (with route options), not arbitrary expressions.
use ws_kit::{Router, routes};

fn main() {
    let _router = Router::<()>::new().routes(routes![|x: u32| x]);
}
