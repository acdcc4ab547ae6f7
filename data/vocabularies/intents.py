"""Customer-query intents (BANKING77-style names), paraphrase templates and slot fillers.

Each template is a paraphrase of one intent; ``{slot}`` names are filled from QUERY_SLOTS (or
from a generated amount/number for ``{amount}``/``{days}``). Variety comes from templates x
slots x openers/closers x noise, so thousands of distinct texts come out of a few pages.
"""

INTENT_TEMPLATES = {
    "card_arrival": [
        "When will my new card arrive?",
        "I still haven't received my {card} card, it's been {days} days",
        "How long does card delivery take to {country}?",
        "My card was supposed to arrive {when} but nothing yet",
        "Is there a way to track the delivery of my card?",
        "Ordered a replacement card {days} days ago and it still hasn't come",
    ],
    "card_payment_declined": [
        "My card payment at {merchant} was declined",
        "Why was my card declined when paying {amount}?",
        "{merchant} keeps rejecting my card",
        "card got declined {when} at {merchant} even though I have money",
        "Payment of {amount} refused at the till, what's wrong?",
    ],
    "lost_or_stolen_card": [
        "I lost my card",
        "My wallet was stolen {when} with my {card} card in it",
        "Can't find my card anywhere, please block it",
        "Someone stole my card at {place}",
        "I think I left my card at {merchant}, how do I freeze it?",
    ],
    "charged_twice": [
        "I was charged twice for {merchant}",
        "The same payment of {amount} shows up two times",
        "{merchant} took the money twice",
        "Duplicate transaction of {amount} on my account",
        "Why do I see two identical charges from {merchant} {when}?",
    ],
    "exchange_rate": [
        "What exchange rate do you use for {currency}?",
        "How much is {amount} in {currency}?",
        "What's the rate from {currency} to {currency2} today?",
        "Do you use the interbank rate when I pay in {currency}?",
        "Where can I see the current exchange rates?",
    ],
    "top_up_failed": [
        "My top up of {amount} failed",
        "Tried to top up with my {card} card and it didn't work",
        "Top-up keeps failing, the app says try again later",
        "Why did my top up get rejected {when}?",
        "Top up from {bank} is not going through",
    ],
    "change_pin": [
        "How do I change my PIN?",
        "I want to set a new PIN for my {card} card",
        "Can I change my pin in the app?",
        "Need to update my card PIN, where do I do it?",
        "Is it possible to change the PIN at an ATM in {country}?",
    ],
    "refund_not_showing": [
        "I was refunded by {merchant} but it's not in my account",
        "{merchant} says they sent a refund of {amount} {days} days ago, where is it?",
        "My refund still isn't showing",
        "Refund from {merchant} is missing from my balance",
        "How long do refunds take to appear? {merchant} refunded me {when}",
    ],
    "activate_my_card": [
        "How do I activate my new card?",
        "My {card} card arrived, how do I activate it?",
        "Card activation isn't working in the app",
        "Where do I go to activate the card you sent me?",
        "Do I need to activate my {card} card before using it?",
    ],
    "pending_transfer": [
        "My transfer to {person} is still pending",
        "Why is my transfer of {amount} still pending after {days} days?",
        "The bank transfer I made {when} says pending",
        "How long does a transfer stay pending?",
        "Transfer of {amount} stuck on pending",
    ],
    "transfer_not_received_by_recipient": [
        "{person} hasn't received the money I sent",
        "I sent {amount} to {person} {when} but they didn't get it",
        "The recipient says my transfer never arrived",
        "Money left my account but {person} has nothing",
        "Why hasn't my transfer of {amount} reached {person}?",
    ],
    "balance_not_updated_after_bank_transfer": [
        "I transferred money from {bank} but my balance hasn't updated",
        "My balance still shows the old amount after a transfer of {amount}",
        "Sent {amount} from {bank} {when}, balance not updated",
        "Why isn't the money from my {bank} account showing?",
        "Balance didn't change after the bank transfer",
    ],
    "cash_withdrawal_not_recognised": [
        "There's a cash withdrawal of {amount} I didn't make",
        "I don't recognise an ATM withdrawal from {when}",
        "Someone took out {amount} in cash from my account",
        "Unknown cash withdrawal in {country} on my statement",
        "I never withdrew cash {when}, what is this?",
    ],
    "direct_debit_payment_not_recognised": [
        "There's a direct debit from {merchant} I don't recognise",
        "Who set up a direct debit of {amount} on my account?",
        "I don't know this direct debit payment",
        "A direct debit I never agreed to was taken {when}",
        "Unknown direct debit to {merchant} for {amount}",
    ],
    "compromised_card": [
        "I think my card details were stolen",
        "Someone used my card online at {merchant}",
        "My card has been hacked, there are payments I didn't make",
        "I got a fraud alert for {amount} at {merchant}",
        "I entered my card on a fake website, what should I do?",
    ],
    "card_not_working": [
        "My card isn't working",
        "{card} card stopped working {when}",
        "My card doesn't work anywhere",
        "Card not working at {merchant} or online",
        "Why does my card not work in {country}?",
    ],
    "declined_cash_withdrawal": [
        "The ATM declined my withdrawal of {amount}",
        "I couldn't take out cash {when}, the machine said declined",
        "Why was my cash withdrawal refused in {country}?",
        "ATM won't let me withdraw money",
        "Cash withdrawal of {amount} declined but I have funds",
    ],
    "card_payment_fee_charged": [
        "Why was I charged a fee for a card payment in {currency}?",
        "There's an extra fee on my payment to {merchant}",
        "I paid {amount} by card and got charged a fee",
        "What is this card payment fee {when}?",
        "Do you charge fees for paying abroad in {country}?",
    ],
    "verify_identity": [
        "How do I verify my identity?",
        "Why do you need to see my ID?",
        "My identity verification keeps failing",
        "What documents do I need to verify my account?",
        "The app won't accept my passport photo for verification",
    ],
    "edit_personal_details": [
        "I need to change my address",
        "How do I update my phone number?",
        "I got married and need to change my surname",
        "Can I edit my personal details in the app?",
        "My email address on the account is wrong, how do I fix it?",
    ],
    "apple_pay_or_google_pay": [
        "How do I add my card to {wallet}?",
        "{wallet} isn't working with my card",
        "Can I use {wallet} with my {card} card?",
        "My card won't add to {wallet}",
        "Does your bank support {wallet}?",
    ],
    "contactless_not_working": [
        "Contactless doesn't work at {merchant}",
        "Why won't my card tap to pay?",
        "Contactless payment failed {when}",
        "My {card} card only works with chip and PIN, not contactless",
        "Tapping my card does nothing at the terminal",
    ],
    "atm_support": [
        "Which ATMs can I use in {country}?",
        "Can I withdraw cash from any ATM?",
        "Is there an ATM fee in {country}?",
        "Where is the nearest ATM that accepts my card?",
        "How much cash can I take out from an ATM per day?",
    ],
    "terminate_account": [
        "I want to close my account",
        "How do I delete my account?",
        "Please cancel my account and send the balance to {bank}",
        "Can I close my account online?",
        "I'd like to terminate my account {when}",
    ],
}

QUERY_SLOTS = {
    "card": ["Visa", "Mastercard", "debit", "credit", "virtual", "new", "replacement", "metal"],
    "merchant": [
        "Amazon", "Tesco", "Uber", "Starbucks", "Netflix", "Ryanair", "IKEA", "Sainsbury's",
        "Lidl", "Spotify", "eBay", "Zara", "Shell", "Airbnb", "Booking.com", "Apple", "Deliveroo",
        "Costa", "the supermarket", "a petrol station", "a restaurant", "an online shop",
    ],
    "when": [
        "yesterday", "today", "this morning", "last week", "on Monday", "two days ago",
        "over the weekend", "last night", "on 03/11/2024", "on 2024-10-28", "on 5 Nov 2024",
    ],
    "country": [
        "Spain", "France", "the US", "Germany", "Italy", "Portugal", "Canada", "Japan",
        "Poland", "Ireland", "the UK", "Thailand", "Mexico",
    ],
    "currency": ["USD", "EUR", "GBP", "euros", "dollars", "Swiss francs", "yen", "PLN", "CAD"],
    "currency2": ["pounds", "GBP", "EUR", "USD", "euro", "dollars"],
    "person": ["my mum", "my landlord", "a friend", "my brother", "John", "the seller", "my boss"],
    "bank": ["Barclays", "HSBC", "Lloyds", "my other bank", "Monzo", "Chase", "Santander"],
    "wallet": ["Apple Pay", "Google Pay", "Samsung Pay", "apple pay", "gpay"],
    "place": ["the train station", "a bar", "the gym", "the airport", "a festival", "the bus"],
}  # fmt: skip

OPENERS = [
    "", "", "", "", "Hi, ", "Hello, ", "Hey ", "Good morning, ", "Quick question: ", "Help! ",
    "Hi there. ", "Hello team, ",
]  # fmt: skip

CLOSERS = [
    "", "", "", "", " Thanks", " thanks!", " Please help.", " Can you help?",
    " Thank you in advance.", " This is urgent.", " ??", " Cheers",
]  # fmt: skip

# Noise: the shorthand real customers type; the cleaner expands these back (normalise_financial).
ABBREVIATIONS = {
    "account": "acct",
    "payment": "pmt",
    "transfer": "xfer",
    "transaction": "txn",
    "balance": "bal",
    "amount": "amt",
    "please": "pls",
}
