//! The API's documentation, served by the gateway: the OpenAPI document
//! `gateway-build` wrote, completed with the error responses of the
//! installed renderer, as JSON and YAML ([`openapi`]), and Swagger UI over
//! it, compiled in so that it works offline ([`swagger_ui`]).

mod openapi;
mod swagger_ui;

pub(crate) use openapi::{complete as complete_openapi, response as openapi_response, yaml as openapi_yaml};
pub(crate) use swagger_ui::serve as swagger_ui;
