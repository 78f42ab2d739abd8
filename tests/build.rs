//! Marks the IPv6 health-probe test as ignored (with the reason) on a machine without an
//! IPv6 loopback: a test that cannot do its work must not count as passed.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(no_ipv6_loopback)");
    if std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_err() {
        println!("cargo::rustc-cfg=no_ipv6_loopback");
    }
}
