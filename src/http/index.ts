/** `companion-runtime/http`: the loopback gateway, as a layer on the app's own `HttpServer`. */
export * as Gateway from "./Gateway.js"
