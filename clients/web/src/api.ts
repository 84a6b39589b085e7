// The page's clients of the flashsale API, over grpc-web.

import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/flashsale/v1/auth_pb.js";
import { FeedsService } from "./gen/flashsale/v1/feeds_pb.js";
import { PurchaseService } from "./gen/flashsale/v1/purchase_pb.js";

/** The grpc-web base URL: `?api=URL` when given, else the page's own origin (flashsale itself, or Envoy in front of it). */
export function apiBaseUrl(location: Location): string {
  const api = new URLSearchParams(location.search).get("api")?.trim();
  return api ? api.replace(/\/+$/, "") : location.origin;
}

/** Sends `authorization: Bearer <token>` when a token is at hand. Tokens never travel in cookies. */
function bearer(token: () => string | null): Interceptor {
  return (next) => (req) => {
    const t = token();
    if (t) req.header.set("authorization", `Bearer ${t}`);
    return next(req);
  };
}

export interface Api {
  auth: Client<typeof AuthService>;
  feeds: Client<typeof FeedsService>;
  purchase: Client<typeof PurchaseService>;
}

export function createApi(baseUrl: string, token: () => string | null): Api {
  const plain: Transport = createGrpcWebTransport({ baseUrl });
  const authed: Transport = createGrpcWebTransport({ baseUrl, interceptors: [bearer(token)] });
  return {
    auth: createClient(AuthService, plain),
    feeds: createClient(FeedsService, plain),
    purchase: createClient(PurchaseService, authed),
  };
}
