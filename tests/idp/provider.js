// A real OpenID provider (panva/oidc-provider, certified) on loopback for the
// asap-rs identity tests. Started by the test harness:
//
//   node provider.js [--port 0] [--keys-seed rotate-N]
//
// prints `listening http://127.0.0.1:PORT` once it serves. Clients:
//   asap-client / asap-secret      client_credentials, JWT access tokens (RS256), agent claim urn:asap:agent:idp-client
//   asap-client-es / asap-secret   the same with ES256
//   revocable / revocable-secret   client_credentials, opaque access tokens (introspection, revocation)
//   asap-server / server-secret    the resource server: introspects
//   web-app / web-secret           authorization_code + PKCE + refresh_token (devInteractions login)
// Every start generates fresh RS256 and ES256 keys (kids carry a random
// suffix), so a restart on the same port is a key rotation.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const port = Number(arg('--port', '0'));
const AGENT_CLAIM = 'https://github.com/adriannoes/asap-protocol/agent_id';
const AUDIENCE = 'urn:asap:agents';

function jwk(kty, options, alg) {
  const { privateKey } = generateKeyPairSync(kty, options);
  const key = privateKey.export({ format: 'jwk' });
  return { ...key, alg, use: 'sig', kid: `${alg.toLowerCase()}-${randomBytes(4).toString('hex')}` };
}

const keys = [
  jwk('rsa', { modulusLength: 2048 }, 'RS256'),
  jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
];

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  const issuer = `http://127.0.0.1:${actual}`;
  const agentOf = {
    'asap-client': 'urn:asap:agent:idp-client',
    'asap-client-es': 'urn:asap:agent:idp-client',
    'web-app': 'urn:asap:agent:web-app',
  };
  const provider = new Provider(issuer, {
    jwks: { keys },
    clients: [
      { client_id: 'asap-client', client_secret: 'asap-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'asap:execute asap:read' },
      { client_id: 'asap-client-es', client_secret: 'asap-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'asap:execute asap:read' },
      { client_id: 'revocable', client_secret: 'revocable-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'asap:execute' },
      { client_id: 'asap-server', client_secret: 'server-secret', grant_types: [], redirect_uris: [], response_types: [] },
      { client_id: 'web-app', client_secret: 'web-secret', grant_types: ['authorization_code', 'refresh_token'], redirect_uris: ['http://127.0.0.1/callback'], response_types: ['code'], scope: 'openid offline_access asap:execute' },
    ],
    scopes: ['openid', 'offline_access', 'asap:execute', 'asap:read', 'asap:admin'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // JWT access tokens for the ASAP agents; the revocable client's stay opaque.
        defaultResource: (ctx, client) => (client.clientId === 'revocable' ? undefined : AUDIENCE),
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: 'asap:execute asap:read asap:admin',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: client.clientId === 'asap-client-es' ? 'ES256' : 'RS256' } },
        }),
        useGrantedResource: () => true,
      },
    },
    // The custom claim asap-rs binds the envelope sender to.
    extraTokenClaims: (ctx, token) => {
      const agent = agentOf[token.clientId];
      return agent ? { [AGENT_CLAIM]: agent } : undefined;
    },
    loadExistingGrant: async (ctx) => {
      // Consent is implied for the test app: the grant covers what it asked for.
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid offline_access');
      grant.addResourceScope(AUDIENCE, 'asap:execute');
      await grant.save();
      return grant;
    },
    ttl: { AccessToken: 600, ClientCredentials: 600 },
  });
  provider.proxy = false;
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
