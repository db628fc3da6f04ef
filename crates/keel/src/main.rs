fn main() {
    println!("keel {}", env!("CARGO_PKG_VERSION"));
}
