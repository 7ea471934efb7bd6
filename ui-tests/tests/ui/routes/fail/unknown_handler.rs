use ws_kit::{Router, routes};

fn main() {
    let _router = Router::<()>::new().routes(routes![pnig]);
}
