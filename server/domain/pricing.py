"""What a generation costs: per image, or per token from the upstream's usage.

Most catalogue models have a list price per image. Token-priced models
(Gemini image models) are billed by the upstream per token, and their
answers say how many were used: the cost is then what that usage costs at
the catalogue's per-million-token prices. A price or a usage the service
does not know makes the cost unknown (None), never zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TokenUsage:
    """Tokens one upstream call used, as its answer reported them."""

    input_tokens: int = 0
    # Output tokens that are image data, and the rest (text, thinking).
    output_image_tokens: int = 0
    output_text_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_image_tokens + other.output_image_tokens,
            self.output_text_tokens + other.output_text_tokens,
        )


@dataclass(frozen=True)
class TokenPrices:
    """USD per million tokens."""

    input: Decimal
    output_image: Decimal
    output_text: Decimal

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> TokenPrices:
        """From a catalogue row's `token_prices` table (all three keys required)."""
        unknown = set(raw) - {"input", "output_image", "output_text"}
        if unknown:
            raise ValueError(f"unknown token_prices keys: {sorted(unknown)}")
        return cls(
            Decimal(str(raw["input"])),
            Decimal(str(raw["output_image"])),
            Decimal(str(raw["output_text"])),
        )

    def cost(self, usage: TokenUsage) -> Decimal:
        return (
            usage.input_tokens * self.input
            + usage.output_image_tokens * self.output_image
            + usage.output_text_tokens * self.output_text
        ) / _MILLION


def generation_cost(
    price_per_image: Decimal | None,
    token_prices: TokenPrices | None,
    images: int,
    usages: Iterable[TokenUsage | None],
) -> Decimal | None:
    """The cost of a generation that produced `images` images.

    `usages` holds one entry per upstream call that produced images. With
    token prices, the cost is what their summed usage costs, or unknown when
    a call reported none; otherwise it is the per-image price times
    `images`, or unknown without a price.
    """
    if token_prices is not None:
        total = TokenUsage()
        for usage in usages:
            if usage is None:
                return None
            total = total + usage
        return token_prices.cost(total)
    if price_per_image is None:
        return None
    return price_per_image * images
