//! Serves the greeter on 127.0.0.1:8080: `curl localhost:8080/v1/hello/world`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    // HTTP/1.1 and HTTP/2 without TLS (what gRPC clients use) on one port.
    axum::serve(listener, gateway_example::app()?).await?;
    Ok(())
}
