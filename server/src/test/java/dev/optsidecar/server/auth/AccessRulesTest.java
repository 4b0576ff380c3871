package dev.optsidecar.server.auth;

import dev.optsidecar.server.OptError;
import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The token file's format, its strict checks, token lookup by digest, and what a role and globs allow. */
class AccessRulesTest {
    private static AccessRules parse(String json) {
        return AccessRules.parse(json.getBytes(StandardCharsets.UTF_8));
    }

    private static Principal principal(String role, String... globs) {
        return parse(TokenFiles.of().token("p", "secret", role, globs).json()).find("secret");
    }

    @Test
    void globsMatchWholeNamesWithStarForAnyRun() {
        Principal every = principal("reader", "*");
        for (String m : List.of("a", "team-a/run-1", "m.1", "x*y")) {
            assertTrue(every.may(Role.READER, m), m);
        }
        Principal prefix = principal("reader", "team-a/*");
        assertTrue(prefix.may(Role.READER, "team-a/run-1"));
        assertTrue(prefix.may(Role.READER, "team-a/"));
        assertFalse(prefix.may(Role.READER, "team-a"));
        assertFalse(prefix.may(Role.READER, "team-b/run-1"));
        assertFalse(prefix.may(Role.READER, "x/team-a/run-1"));

        Principal several = principal("reader", "mlp", "run-*-eval", "m.1");
        assertTrue(several.may(Role.READER, "mlp"));
        assertFalse(several.may(Role.READER, "mlp2"), "a glob without * is the exact name");
        assertTrue(several.may(Role.READER, "run-7-eval"));
        assertTrue(several.may(Role.READER, "run--eval"));
        assertFalse(several.may(Role.READER, "run-7-evaluation"));
        assertTrue(several.may(Role.READER, "m.1"));
        assertFalse(several.may(Role.READER, "mx1"), "'.' is itself, not any character");
    }

    @Test
    void eachRoleIncludesTheOnesBelowIt() {
        Map<String, List<Role>> allowed = Map.of(
                "reader", List.of(Role.READER),
                "trainer", List.of(Role.READER, Role.TRAINER),
                "admin", List.of(Role.READER, Role.TRAINER, Role.ADMIN));
        allowed.forEach((role, roles) -> {
            Principal p = principal(role, "m");
            for (Role needed : Role.values()) {
                assertEquals(roles.contains(needed), p.may(needed, "m"), role + " doing what " + needed + " may");
                assertFalse(p.may(needed, "other"), role + " on a model it was not given");
            }
        });
    }

    @Test
    void aRefusalNamesTheModelTheRoleNeededAndWhatTheTokenHas() {
        OptError lowRole = assertThrows(OptError.class,
                () -> principal("reader", "*").require(Role.TRAINER, "mlp", "Step", "open.model"));
        assertEquals(OptError.Kind.PERMISSION_DENIED, lowRole.kind());
        assertEquals(OptError.Reason.ACCESS_DENIED, lowRole.reason());
        assertEquals("open.model: Step on model 'mlp' needs role trainer; token 'p' has role reader",
                lowRole.getMessage());
        assertEquals("open.model", lowRole.field());
        assertEquals(Map.of("model", "mlp", "required_role", "trainer", "role", "reader", "token", "p"),
                lowRole.metadata());
        OptError otherModel = assertThrows(OptError.class,
                () -> principal("admin", "a/*", "b").require(Role.READER, "c", "Describe", "model"));
        assertEquals("model: Describe on model 'c' needs role reader; token 'p' has role admin only on models"
                + " matching a/*, b", otherModel.getMessage());
    }

    @Test
    void aTokenIsFoundByItsDigestInEitherCase() {
        String json = TokenFiles.of().token("ci", "ci-token", "trainer", "*").token("ops", "ops-token", "admin", "*")
                .json();
        AccessRules rules = parse(json);
        assertEquals(2, rules.size());
        assertEquals("ci", rules.find("ci-token").name());
        assertEquals(Role.ADMIN, rules.find("ops-token").role());
        assertNull(rules.find("ci-token "));
        assertNull(rules.find(TokenFiles.sha256Hex("ci-token")), "the digest itself is not the token");
        AccessRules upper = parse(json.replace(TokenFiles.sha256Hex("ci-token"),
                TokenFiles.sha256Hex("ci-token").toUpperCase(java.util.Locale.ROOT)));
        assertEquals("ci", upper.find("ci-token").name());
        assertEquals(0, parse("{\"tokens\": []}").size());
    }

    @Test
    void theBearerSchemeInAnyCase() {
        assertEquals("abc", TokenAuthority.bearerToken("Bearer abc"));
        assertEquals("abc", TokenAuthority.bearerToken("bearer  abc "));
        for (String bad : new String[] {null, "", "Bearer", "Bearer   ", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "abc"}) {
            OptError e = assertThrows(OptError.class, () -> TokenAuthority.bearerToken(bad), String.valueOf(bad));
            assertEquals(OptError.Kind.UNAUTHENTICATED, e.kind());
            assertEquals(OptError.Reason.TOKEN_MISSING, e.reason());
        }
    }

    @Test
    void mistakesInTheFileNameTheEntryAndTheField() {
        String digest = TokenFiles.sha256Hex("t");
        String other = TokenFiles.sha256Hex("u");
        String good = "{\"name\": \"a\", \"sha256\": \"" + digest + "\", \"role\": \"reader\", \"models\": [\"*\"]}";
        Map<String, String> mistakes = new java.util.LinkedHashMap<>();
        mistakes.put("", "must be a JSON object {\"tokens\": [...]}");
        mistakes.put("[]", "must be a JSON object {\"tokens\": [...]}");
        mistakes.put("{\"tokens\": [] ", "not valid JSON");
        mistakes.put("{\"tokens\": []} {}", "not valid JSON");
        mistakes.put("{}", "\"tokens\" must be a list of {name, sha256, role, models}");
        mistakes.put("{\"tokens\": [], \"token\": []}", "unknown field 'token' (the file has only \"tokens\")");
        mistakes.put("{\"tokens\": [], \"tokens\": []}", "not valid JSON (Duplicate field 'tokens'");
        mistakes.put("{\"tokens\": [7]}", "tokens[0]: must be an object {name, sha256, role, models}");
        mistakes.put("{\"tokens\": [{\"sha256\": \"" + digest + "\"}]}", "tokens[0]: name must be a non-empty string");
        mistakes.put("{\"tokens\": [" + good.replace("\"role\"", "\"roles\"") + "]}",
                "tokens[0] (\"a\"): unknown field 'roles' (an entry has name, sha256, role and models)");
        mistakes.put("{\"tokens\": [" + good.replace(digest, digest.substring(1)) + "]}",
                "tokens[0] (\"a\"): sha256 must be the token's SHA-256 digest as 64 hex digits");
        mistakes.put("{\"tokens\": [" + good.replace(digest, "z" + digest.substring(1)) + "]}",
                "tokens[0] (\"a\"): sha256 must be");
        mistakes.put("{\"tokens\": [" + good.replace("reader", "writer") + "]}",
                "tokens[0] (\"a\"): role must be \"reader\", \"trainer\" or \"admin\", not \"writer\"");
        mistakes.put("{\"tokens\": [" + good.replace("[\"*\"]", "[]") + "]}",
                "tokens[0] (\"a\"): models must be a non-empty list of model name globs");
        mistakes.put("{\"tokens\": [" + good.replace("[\"*\"]", "\"*\"") + "]}",
                "tokens[0] (\"a\"): models must be a non-empty list");
        mistakes.put("{\"tokens\": [" + good.replace("[\"*\"]", "[\"a\", \"\"]") + "]}",
                "tokens[0] (\"a\"): models[1] must be a non-empty string");
        mistakes.put("{\"tokens\": [" + good + ", " + good.replace(digest, other) + "]}",
                "tokens[1] (\"a\"): name is already the name of tokens[0]");
        mistakes.put("{\"tokens\": [" + good + ", " + good.replace("\"a\"", "\"b\"") + "]}",
                "tokens[1] (\"b\"): sha256 is the digest of the same token as tokens[0] (\"a\")");
        mistakes.forEach((json, expected) -> {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> parse(json), json);
            assertTrue(e.getMessage().startsWith(expected), () -> json + "\n  gave: " + e.getMessage()
                    + "\n  expected: " + expected);
            assertFalse(e.getMessage().contains("Source:"), e::getMessage);
        });
    }
}
